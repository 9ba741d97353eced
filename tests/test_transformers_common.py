"""transformers' own common model tests (ModelTesterMixin, GenerationTesterMixin and the exporter mixins), run against
TinyTransformer the way in-tree models run them (as tests/models/bart/test_modeling_bart.py does for BART).

Those mixins live in transformers' test suite, which the installed package does not carry: the module runs them from
the folder `TRANSFORMERS_TESTS_DIR` names, which holds the `tests/` folder of the installed transformers release, and
skips where the variable is not set. scripts/transformers_common_tests.sh fetches that folder into a cache and runs
the module. The ordinary suite leaves it out (a minute more, and the download); the behaviours these tests found wrong
are pinned by the model's own tests. The source distribution on PyPI has
`tests/test_modeling_common.py` but not `tests/generation/` or `tests/exporters/`: from it only ModelTesterMixin's
own tests run, and `test_generation_and_export_mixins_are_present` skips, saying so. A full `tests/` folder (a git
checkout of the release tag) runs all three.
"""

import importlib
import importlib.util
import os
import sys
import types
import unittest
import unittest.mock
from pathlib import Path

import pytest
import torch
import transformers

from hf_tiny_transformer import TinyTransformerConfig, TinyTransformerForConditionalGeneration, TinyTransformerModel

pytestmark = pytest.mark.slow

FOLDER = Path(os.environ.get("TRANSFORMERS_TESTS_DIR", ""))
PACKAGE = "transformers_own_tests"  # the name its `tests/` folder is imported under (ours is `tests`)
# The mixins that tests/test_modeling_common.py imports from its neighbours, and where.
NEIGHBOURS = {"exporters.test_export": "ExportTesterMixin", "generation.test_utils": "GenerationTesterMixin"}

if not os.environ.get("TRANSFORMERS_TESTS_DIR") or not (FOLDER / "tests" / "test_modeling_common.py").is_file():
    pytest.skip(
        "transformers' own common tests run with scripts/transformers_common_tests.sh (or with TRANSFORMERS_TESTS_DIR "
        f"set to a folder holding the `tests/` of transformers {transformers.__version__})",
        allow_module_level=True,
    )
pytest.importorskip("parameterized", reason="transformers' common tests need `parameterized` (the dev extra)")


def import_transformers_tests() -> tuple[list[str], types.ModuleType]:
    """Import transformers' `tests/` folder as the package PACKAGE, without adding it to sys.path. A neighbour
    module missing from the folder is stood in for by an empty mixin; returns the missing ones and
    test_modeling_common."""
    folder = FOLDER / "tests"
    spec = importlib.util.spec_from_file_location(
        PACKAGE, folder / "__init__.py", submodule_search_locations=[str(folder)]
    )
    package = importlib.util.module_from_spec(spec)
    sys.modules[PACKAGE] = package
    if (folder / "__init__.py").is_file():
        spec.loader.exec_module(package)
    missing = []
    for name, mixin in NEIGHBOURS.items():
        if not (folder / (name.replace(".", "/") + ".py")).is_file():
            missing.append(f"tests/{name.replace('.', '/')}.py")
            for depth in range(1, name.count(".") + 2):
                module_name = f"{PACKAGE}.{'.'.join(name.split('.')[:depth])}"
                sys.modules.setdefault(module_name, types.ModuleType(module_name))
            setattr(sys.modules[f"{PACKAGE}.{name}"], mixin, type(mixin, (), {}))
    return missing, importlib.import_module(f"{PACKAGE}.test_modeling_common")


MISSING, common = import_transformers_tests()
GenerationTesterMixin = sys.modules[f"{PACKAGE}.generation.test_utils"].GenerationTesterMixin
ids_tensor = common.ids_tensor


class TinyTransformerModelTester:
    """Tiny configs and inputs for the common tests, sized as BART's tester sizes them."""

    def __init__(self, parent, batch_size=13, seq_length=7, is_training=True, vocab_size=99, hidden_size=16):
        self.parent = parent
        self.batch_size = batch_size
        self.seq_length = seq_length
        self.encoder_seq_length = seq_length
        self.decoder_seq_length = seq_length
        self.key_length = seq_length
        self.is_training = is_training
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.num_hidden_layers = 2
        self.num_attention_heads = 4
        self.intermediate_size = 4 * hidden_size
        self.max_position_embeddings = 32
        self.pad_token_id, self.bos_token_id, self.eos_token_id = 0, 1, 2

    def get_config(self) -> TinyTransformerConfig:
        return TinyTransformerConfig(
            vocab_size=self.vocab_size,
            d_model=self.hidden_size,
            encoder_layers=self.num_hidden_layers,
            decoder_layers=self.num_hidden_layers,
            num_attention_heads=self.num_attention_heads,
            ffn_dim=self.intermediate_size,
            max_position_embeddings=self.max_position_embeddings,
            pad_token_id=self.pad_token_id,
            bos_token_id=self.bos_token_id,
            eos_token_id=self.eos_token_id,
        )

    def prepare_config_and_inputs(self) -> tuple[TinyTransformerConfig, dict]:
        # Ordinary tokens (>= 3), each source ending in </s>, as BART's tester builds them.
        input_ids = ids_tensor([self.batch_size, self.seq_length], self.vocab_size - 3) + 3
        input_ids[:, -1] = self.eos_token_id
        decoder_input_ids = ids_tensor([self.batch_size, self.seq_length], self.vocab_size - 3) + 3
        inputs = {
            "input_ids": input_ids,
            "attention_mask": input_ids.ne(self.pad_token_id),
            "decoder_input_ids": decoder_input_ids,
            "decoder_attention_mask": decoder_input_ids.ne(self.pad_token_id),
        }
        return self.get_config(), inputs

    def prepare_config_and_inputs_for_common(self) -> tuple[TinyTransformerConfig, dict]:
        return self.prepare_config_and_inputs()


class TinyTransformerModelTest(common.ModelTesterMixin, GenerationTesterMixin, unittest.TestCase):
    all_model_classes = (TinyTransformerModel, TinyTransformerForConditionalGeneration)
    is_encoder_decoder = True
    test_resize_embeddings = True

    def setUp(self):
        self.model_tester = TinyTransformerModelTester(self)

    def _prepare_for_class(self, inputs_dict, model_class, return_labels=False):
        # The mixin adds labels for the classes transformers' auto mappings list (in-tree models); ours is not there.
        inputs_dict = super()._prepare_for_class(inputs_dict, model_class)
        if return_labels and model_class is TinyTransformerForConditionalGeneration:
            inputs_dict["labels"] = torch.zeros(
                (self.model_tester.batch_size, self.model_tester.seq_length), dtype=torch.long
            )
        return inputs_dict

    # The training tests leave out the bare model (no loss), which they recognise in in-tree models by the auto
    # mappings' names.
    def test_training(self):
        with unittest.mock.patch.object(self, "all_model_classes", (TinyTransformerForConditionalGeneration,)):
            super().test_training()

    def check_training_gradient_checkpointing(self, gradient_checkpointing_kwargs=None):
        with unittest.mock.patch.object(self, "all_model_classes", (TinyTransformerForConditionalGeneration,)):
            super().check_training_gradient_checkpointing(gradient_checkpointing_kwargs)

    def test_generation_and_export_mixins_are_present(self):
        if MISSING:
            self.skipTest(
                f"{FOLDER / 'tests'} lacks {', '.join(MISSING)} (the PyPI source distribution carries only "
                "tests/*.py): their mixins did not run; point TRANSFORMERS_TESTS_DIR at a checkout of transformers "
                f"v{transformers.__version__} to run them"
            )
        self.assertTrue(issubclass(TinyTransformerModelTest, GenerationTesterMixin))

    def test_tiny_model_runs(self):
        """The tester's inputs give logits of the tester's shape (a check of the tester itself)."""
        config, inputs = self.model_tester.prepare_config_and_inputs_for_common()
        model = TinyTransformerForConditionalGeneration(config).eval()
        with torch.no_grad():
            logits = model(**inputs).logits
        self.assertEqual(tuple(logits.shape), (13, 7, 99))
