"""The benchmark: every arm (stock nnU-Net, ResEnc-M, XLSTMUNet from scratch / pretrained / without mLSTM) on the
same splits, budgets and evaluation; ``nnunetv2_xlstm_benchmark``."""
