"""Discovery shim for ``nnUNet_extTrainer``: nnU-Net imports this folder's modules by file; the classes live in the
``nnunetv2_xlstm.training`` modules so that they keep one importable identity (pickling, multiprocessing)."""

from nnunetv2_xlstm.training.benchmark import *  # noqa: F401,F403
from nnunetv2_xlstm.training.pretrained import *  # noqa: F401,F403
from nnunetv2_xlstm.training.semi import *  # noqa: F401,F403
from nnunetv2_xlstm.training.xlstm import *  # noqa: F401,F403
