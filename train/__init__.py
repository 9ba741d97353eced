"""hf_tiny_transformer_train: the command-line training of TinyTransformer (installed from the `train/` folder).

`train.py` is the script (`python train/train.py`); its modules are importable as `hf_tiny_transformer_train.*`
by the benchmarks and the tests: the synthetic corpus (`data`), sequence metrics (`metrics`), checkpoint selection
on resume (`checkpoints`) and the model card (`model_card`).
"""
