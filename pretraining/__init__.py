"""Student-teacher (DINO-style) pretraining of the XLSTMUNet encoder on unlabeled CT and MRI.

Installed under the import name ``nnunetv2_xlstm_pretraining`` (the folder is ``pretraining/``), so it never shadows
an unrelated package called ``pretraining``. It uses the network code of ``nnunetv2_xlstm`` but not nnU-Net's trainer.
"""
