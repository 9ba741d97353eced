"""torch.export of the forward and of static-cache decoding; torch.compile of training and generation."""

import pytest
import torch
from conftest import STEP_SCORES
from torch._dynamo.testing import CompileCounterWithBackend
from transformers.cache_utils import DynamicCache, EncoderDecoderCache

from hf_tiny_transformer.modeling_tiny_transformer import CACHE_FIELD

pytestmark = pytest.mark.slow

# The compiled models have one encoder and one decoder layer: every kind of operation of the model (each position
# scheme's, the cache's), in half the graph of the usual tiny model. On a machine whose compile cache is empty,
# compiling is most of these tests' time, and it grows with the graph.
ONE_LAYER_EACH = dict(encoder_layers=1, decoder_layers=1)

# Which of torch.compile's stages each scheme's compiled tests go through. What is ours to get right (one graph
# without breaks, no recompilation, the same loss, gradients and tokens as eager) is decided by dynamo's capture and
# AOT autograd, which every scheme goes through ("aot_eager"). Inductor then turns the same graph into C++ kernels,
# one compiler run per kernel (about 0.45 s each on an empty compile cache, most of a cold test suite's compiler
# time): it runs for the relative scheme, the default recipes' and the one with position code of its own to lower
# (the bucketing of distances); the other two schemes add only a table lookup and an addition to it.
INDUCTOR_SCHEME = "relative"


def compile_backend(position_embedding_type: str) -> str:
    return "inductor" if position_embedding_type == INDUCTOR_SCHEME else "aot_eager"


def test_forward_exports_and_matches_eager_execution(make_model, batch):
    model = make_model()
    input_ids, attention_mask = batch(40, [7, 4])
    kwargs = dict(
        input_ids=input_ids, attention_mask=attention_mask, decoder_input_ids=input_ids[:, :5], use_cache=False
    )
    exported = torch.export.export(model, args=(), kwargs=kwargs, strict=False)
    torch.testing.assert_close(exported.module()(**kwargs).logits, model(**kwargs).logits)


def test_static_cache_decoder_exports_and_generates_like_generate(make_model, batch):
    executorch = pytest.importorskip("transformers.integrations.executorch")
    # The wrapper starts decoding from token 0, T5's convention; make that our decoder start token too.
    model = make_model(initializer_range=0.5, seed=3, decoder_start_token_id=0)
    input_ids, _ = batch(40, [8])
    exportable = executorch.Seq2SeqLMExportableModule(
        model, batch_size=1, max_hidden_seq_length=32, max_cache_length=20
    ).export(encoder_input_ids=input_ids)
    exported_tokens = exportable.generate(input_ids, max_new_tokens=10)
    reference = model.generate(input_ids, max_new_tokens=9, min_new_tokens=9, do_sample=False)
    assert exported_tokens == reference[0].tolist()


def test_compiled_training_step_matches_eager(make_model, batch, position_embedding_type):
    torch._dynamo.reset()  # graphs compiled by earlier tests in this process count towards the recompile limit
    input_ids, attention_mask = batch(40, [6, 4])
    labels = torch.randint(3, 40, (2, 5))
    losses = []
    for compiled in (False, True):
        model = make_model(dropout=0.0, **ONE_LAYER_EACH).train()
        backend = compile_backend(position_embedding_type)
        forward = torch.compile(model, fullgraph=True, backend=backend) if compiled else model
        loss = forward(input_ids=input_ids, attention_mask=attention_mask, labels=labels).loss
        loss.backward()
        losses.append((loss.detach(), model.lm_head.weight.grad.clone()))
    torch.testing.assert_close(losses[0][0], losses[1][0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(losses[0][1], losses[1][1], atol=1e-5, rtol=1e-5)


def test_compiled_static_cache_generation_matches_eager_with_two_graphs(make_model, batch, position_embedding_type):
    """The compiled decoding transformers documents (a static cache, the forward compiled with fixed shapes): two
    graphs, the first step's and every later step's. A graph per step would mean a recompilation at every token until
    dynamo's limit, after which the steps silently run eagerly."""
    torch._dynamo.reset()  # graphs compiled by earlier tests in this process count towards the recompile limit
    # Token ids compared exactly although compiled kernels may sum in another order than eager ones: with the large
    # initializer_range every step's top logit wins by far more than such rounding (checked).
    model = make_model(initializer_range=0.5, seed=3, **ONE_LAYER_EACH)
    input_ids, attention_mask = batch(40, [8, 5])
    settings = dict(max_new_tokens=8, min_new_tokens=8, do_sample=False, cache_implementation="static")
    result = model.generate(input_ids, attention_mask=attention_mask, **STEP_SCORES, **settings)
    best_two = torch.stack(result.scores).topk(2, dim=-1).values
    assert (best_two[..., 0] - best_two[..., 1]).min() > 1e-3
    eager = result.sequences
    counter = CompileCounterWithBackend(compile_backend(position_embedding_type))
    model.forward = torch.compile(model.forward, fullgraph=False, dynamic=False, backend=counter)
    compiled = model.generate(input_ids, attention_mask=attention_mask, **settings)
    assert torch.equal(eager, compiled)
    assert counter.frame_count == 2


def test_forward_with_a_cache_exports_and_gives_back_the_same_cache_as_eager(make_model, batch):
    """The exported forward and the eager one return the caller's cache with the same layers and tensors (what
    transformers' export tests compare): no layer of the model's own, no buffer with unwritten slots."""
    model = make_model()
    input_ids, attention_mask = batch(40, [7, 4])

    def inputs() -> dict:
        cache = EncoderDecoderCache(DynamicCache(config=model.config), DynamicCache(config=model.config))
        return {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "decoder_input_ids": input_ids[:, :5],
            "use_cache": True,
            CACHE_FIELD: cache,
        }

    # transformers' exporters register its cache classes as pytree nodes, so that a cache can be an input.
    pytest.importorskip("transformers.exporters.exporter_dynamo").register_cache_pytrees_for_model(model)
    exported = torch.export.export(model, args=(), kwargs=inputs(), strict=False)
    with torch.no_grad():
        eager = model(**inputs())
        replayed = exported.module()(**inputs())
    torch.testing.assert_close(replayed.logits, eager.logits)
    for side in ("self_attention_cache", "cross_attention_cache"):
        eager_layers = getattr(getattr(eager, CACHE_FIELD), side).layers
        replayed_layers = getattr(getattr(replayed, CACHE_FIELD), side).layers
        assert [type(layer) for layer in eager_layers] == [type(layer) for layer in replayed_layers]
        for eager_layer, replayed_layer in zip(eager_layers, replayed_layers):
            eager_tensors = {name: value for name, value in vars(eager_layer).items() if torch.is_tensor(value)}
            replayed_tensors = {name: value for name, value in vars(replayed_layer).items() if torch.is_tensor(value)}
            assert set(eager_tensors) == set(replayed_tensors)
            for name, tensor in eager_tensors.items():
                torch.testing.assert_close(replayed_tensors[name], tensor)
