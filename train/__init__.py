"""hf_tiny_transformer_train: the command-line training of TinyTransformer (installed from the `train/` folder).

`train.py` is the script (`python train/train.py`), `main()` the flow of a run; its arguments (dataclasses, the recipe
files of `recipes/` they start from, and their checks) are in `arguments`. The modules are importable as
`hf_tiny_transformer_train.*` by the benchmarks, the tests and the demo: the Trainer with the relative position
biases' own learning rate (`trainer`), the synthetic corpus (`data`) and the held-out inputs a person types
(`typed_inputs`), a user's own data (`user_data`) and a tokenizer trained on them (`tokenizer_training`), metrics of
generations (`metrics`), evaluations scored on a teacher-forced forward (`evaluation`), the stop at a validation
target (`callbacks`), checkpoint selection on resume (`checkpoints`), the model card (`model_card`), what the demo page
shows (`demo`), and how idle OpenMP threads wait and how many threads torch runs as the machine's load changes
(`openmp`). `make_dates.py` writes the example corpus of the README's "Train on your own data".
"""
