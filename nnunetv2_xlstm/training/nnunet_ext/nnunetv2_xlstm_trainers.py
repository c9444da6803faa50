"""Discovery shim for ``nnUNet_extTrainer``: nnU-Net imports this folder's modules by file; the classes live in
``nnunetv2_xlstm.training.trainers`` and ``...semi`` so that they keep one importable identity (pickling, multiprocessing)."""

from nnunetv2_xlstm.training.semi import *  # noqa: F401,F403
from nnunetv2_xlstm.training.trainers import *  # noqa: F401,F403
