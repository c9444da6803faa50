"""Model code (no nnU-Net imports): the bidirectional mLSTM mixer and the XLSTMUNet built around it."""

from nnunetv2_xlstm.network.mlstm import BidirectionalMLSTM, mlstm_kernel_for, num_heads_for
from nnunetv2_xlstm.network.xlstm_unet import XLSTMUNet, default_mlstm_stages, insert_mlstm_stages

__all__ = ["BidirectionalMLSTM", "XLSTMUNet", "default_mlstm_stages", "insert_mlstm_stages", "mlstm_kernel_for",
           "num_heads_for"]
