"""nnU-Net trainers for XLSTMUNet plans. Stock nnU-Net finds them through ``nnUNet_extTrainer`` (see ``env``)."""
