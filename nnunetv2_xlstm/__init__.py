"""nnunetv2-xlstm: an nnU-Net v2 extension with a 3D xLSTM-UNet, student-teacher pretraining and few-label training."""

import logging

# torch logs "No CUDA runtime is found, using CUDA_HOME=..." whenever the mLSTM kernels' imports reach
# torch.utils.cpp_extension on a machine without a GPU; on a CPU machine that is expected, not a problem
logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
