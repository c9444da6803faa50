"""nnU-Net trainers for our plans, one topic a module: :mod:`.schedules`, :mod:`.scheduled` (the base trainer),
:mod:`.xlstm` (XLSTMUNet and the from-scratch baseline), :mod:`.pretrained` (fine-tuning), :mod:`.semi`
(semi-supervised) and :mod:`.benchmark` (any network). Stock nnU-Net finds them through ``nnUNet_extTrainer``
(see ``env``)."""
