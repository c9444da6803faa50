"""Folder named in ``nnUNet_extTrainer``; see nnunetv2_xlstm_trainers.py."""
