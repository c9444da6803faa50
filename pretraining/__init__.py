"""Student-teacher pretraining of the XLSTMUNet (masked distillation with reconstruction by default, or DINO) on
unlabeled CT and MRI, in an nnU-Net plans' fine-tuning geometry or an isotropic one.

Installed under the import name ``nnunetv2_xlstm_pretraining`` (the folder is ``pretraining/``), so it never shadows
an unrelated package called ``pretraining``. It uses the network code of ``nnunetv2_xlstm`` but not nnU-Net's trainer.
"""
