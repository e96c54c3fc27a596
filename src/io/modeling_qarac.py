# The QARAC models for transformers (docs/design.md §2), shipped beside every QARAC export and
# loaded with trust_remote_code=True:
#   AutoModel.from_pretrained(export, trust_remote_code=True)
# gives QaracEncoderModel for the question and answer encoders (pooler_output: the QARAC vector)
# and QaracDecoderModel for the decoder (logits of "<s> y" given a vector in slot 0; greedy
# generation from vectors or from text). Written by QARAC-MT; it computes what the C++ models
# compute (src/model/pooling.*, src/model/decoder.*), which tests/python/test_hf_export.py checks.
# The exports' config.json names model types of their own (qarac_encoder, qarac_decoder), declared
# here, so that transformers refuses them without trust_remote_code instead of loading a plain
# RoBERTa that ignores the heads; the base's tensor names are RoBERTa's, so RobertaModel.from_pretrained(
# export) still loads the base alone when asked for by name, but the decoder's LM head is
# "qarac_lm_head", so RobertaForCausalLM.from_pretrained(decoder export) reports every weight of its
# head missing rather than load a head without the decoder's head layers.
import math

import torch
from torch import nn
from transformers import RobertaConfig, RobertaModel, RobertaPreTrainedModel
from transformers.activations import ACT2FN
from transformers.modeling_outputs import BaseModelOutputWithPooling, CausalLMOutput

# The cosine's clamp of src/model/pooling.h (PoolingHead::kCosineEps).
COSINE_EPS = 1e-12


class QaracEncoderConfig(RobertaConfig):
    model_type = "qarac_encoder"


class QaracDecoderConfig(RobertaConfig):
    model_type = "qarac_decoder"


def _padding_mask(config, input_ids, attention_mask):
    if attention_mask is None:
        return (input_ids != config.pad_token_id).long()
    return attention_mask


def _position_ids(config, mask):
    """pad + 1 + t for the t-th real token, as the C++ models number them: transformers would
    count from input_ids != pad, which gives a "<pad>" written in the text the padding position."""
    real = mask.long()
    return real.cumsum(dim=1) * real + config.pad_token_id


class QaracPooling(nn.Module):
    """g = Wg·Σ_t X_t, l_t = Wl·X_t, a_t = cos(l_t, g), v = Σ_t a_t X_t over the real tokens."""

    def __init__(self, hidden_size):
        super().__init__()
        self.global_projection = nn.Linear(hidden_size, hidden_size, bias=False)
        self.local_projection = nn.Linear(hidden_size, hidden_size, bias=False)

    def forward(self, hidden, mask):
        m = mask.to(hidden.dtype).unsqueeze(-1)
        x = hidden * m
        g = self.global_projection(x.sum(dim=1))
        local = self.local_projection(x)
        dot = (local * g.unsqueeze(1)).sum(-1)
        norms = local.norm(dim=-1) * g.norm(dim=-1, keepdim=True)
        # As the C++ cosine: the denominator is clamped to eps, not added to it.
        a = torch.where(norms > COSINE_EPS, dot / norms.clamp_min(COSINE_EPS), dot / COSINE_EPS)
        return ((a.unsqueeze(-1) * m) * x).sum(dim=1)


class QaracEncoderModel(RobertaPreTrainedModel):
    """A QARAC sentence encoder: RoBERTa (bidirectional) and the global attention pooling head."""

    config_class = QaracEncoderConfig
    base_model_prefix = "roberta"

    def __init__(self, config):
        super().__init__(config)
        self.roberta = RobertaModel(config, add_pooling_layer=False)
        self.pooling = QaracPooling(config.hidden_size)
        self.post_init()

    def forward(self, input_ids, attention_mask=None, **kwargs):
        mask = _padding_mask(self.config, input_ids, attention_mask)
        hidden = self.roberta(input_ids=input_ids, attention_mask=mask,
                              position_ids=_position_ids(self.config, mask)).last_hidden_state
        return BaseModelOutputWithPooling(last_hidden_state=hidden,
                                          pooler_output=self.pooling(hidden, mask))


class _Attention(nn.Module):
    def __init__(self, config):
        super().__init__()
        d = config.hidden_size
        self.query, self.key, self.value = nn.Linear(d, d), nn.Linear(d, d), nn.Linear(d, d)


class _Output(nn.Module):
    def __init__(self, config, width):
        super().__init__()
        self.dense = nn.Linear(width, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)


class _AttentionBlock(nn.Module):
    def __init__(self, config):
        super().__init__()
        setattr(self, "self", _Attention(config))  # the name RoBERTa's checkpoints use
        self.output = _Output(config, config.hidden_size)


class _Intermediate(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.intermediate_size)


def _layer(layer, config, x, allowed, cache=None):
    """A post-LN RoBERTa layer (transformers' RobertaLayer or QaracHeadLayer: the checkpoint's
    module names) over the rows x [B, n, d] with an explicit mask allowed [B, n, keys]. With a
    cache (a list, empty at first), x are new positions: their keys and values join the cached
    ones [B, H, S, Dh] before the attention, which then covers S + n keys."""
    b, n, d = x.shape
    heads = config.num_attention_heads
    att = getattr(layer.attention, "self")
    split = lambda t: t.view(b, n, heads, d // heads).transpose(1, 2)
    q, k, v = split(att.query(x)), split(att.key(x)), split(att.value(x))
    if cache is not None:
        if cache:
            k, v = torch.cat([cache[0], k], dim=2), torch.cat([cache[1], v], dim=2)
        cache[:] = [k, v]
    scores = q @ k.transpose(-1, -2) / math.sqrt(d // heads)
    # The dtype's lowest, not -inf: a row with no key allowed (a left pad's) gives a uniform
    # softmax instead of NaN; the others' masked keys still weigh exactly 0.
    scores = scores.masked_fill(~allowed.unsqueeze(1), torch.finfo(scores.dtype).min)
    context = (scores.softmax(-1) @ v).transpose(1, 2).reshape(b, n, d)
    out = layer.attention.output
    h = out.LayerNorm(x + out.dense(context))
    act = ACT2FN[config.hidden_act]
    return layer.output.LayerNorm(h + layer.output.dense(act(layer.intermediate.dense(h))))


class QaracHeadLayer(nn.Module):
    """A post-LN RoBERTa layer over an explicit attention mask (the decoder's head layers)."""

    def __init__(self, config):
        super().__init__()
        self.config = config
        self.attention = _AttentionBlock(config)
        self.intermediate = _Intermediate(config)
        self.output = _Output(config, config.intermediate_size)

    def forward(self, x, allowed, cache=None):
        return _layer(self, self.config, x, allowed, cache)


class QaracLMHead(nn.Module):
    """dense, GELU, LayerNorm, then the output matrix (own, or the word embeddings when tied)."""

    def __init__(self, config):
        super().__init__()
        self.act = ACT2FN[config.hidden_act]
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.layer_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        if not config.tie_word_embeddings:
            self.decoder = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.bias = nn.Parameter(torch.zeros(config.vocab_size))

    def forward(self, x, word_embeddings):
        x = self.layer_norm(self.act(self.dense(x)))
        weight = self.decoder.weight if hasattr(self, "decoder") else word_embeddings
        return x @ weight.t() + self.bias


def _causal(mask):
    """[B, S, S]: position t attends to the real positions <= t."""
    s = mask.shape[1]
    lower = torch.ones(s, s, dtype=torch.bool, device=mask.device).tril()
    return lower.unsqueeze(0) & mask.bool().unsqueeze(1)


class QaracDecoderModel(RobertaPreTrainedModel):
    """The QARAC decoder D(v, y): a causal RoBERTa over "<s> y", the vector prepended as a slot-0
    row for the first head layer, a second head layer without it, and the LM head."""

    config_class = QaracDecoderConfig
    base_model_prefix = "roberta"

    def __init__(self, config):
        super().__init__(config)
        self.roberta = RobertaModel(config, add_pooling_layer=False)
        self.decoder_layers = nn.ModuleList([QaracHeadLayer(config) for _ in range(2)])
        # Not "lm_head": RobertaForCausalLM given this export then misses its whole head, and says so.
        self.qarac_lm_head = QaracLMHead(config)
        self.post_init()

    def forward(self, vectors, input_ids, attention_mask=None, **kwargs):
        mask = _padding_mask(self.config, input_ids, attention_mask)
        hidden = self.roberta(input_ids=input_ids, attention_mask=mask,
                              position_ids=_position_ids(self.config, mask),
                              use_cache=False).last_hidden_state
        slot = torch.ones_like(mask[:, :1])
        extended = torch.cat([vectors.to(hidden.dtype).unsqueeze(1), hidden], dim=1)
        h1 = self.decoder_layers[0](extended, _causal(torch.cat([slot, mask], dim=1)))[:, 1:]
        h2 = self.decoder_layers[1](h1, _causal(mask))
        word = self.roberta.embeddings.word_embeddings.weight
        return CausalLMOutput(logits=self.qarac_lm_head(h2, word))

    def _extend(self, ids, mask, caches, vectors=None):
        """Runs the new positions ids [B, n] (the last n of mask [B, S], which covers every
        position so far) over the key/value caches of every layer, as forward() computes them;
        with vectors, the start: the slot row goes first into head layer 0's cache. Returns the
        logits of the last new position [B, V]."""
        cfg, n = self.config, ids.shape[1]
        allowed = _causal(mask)[:, -n:]
        x = self.roberta.embeddings(input_ids=ids, position_ids=_position_ids(cfg, mask)[:, -n:])
        for layer, cache in zip(self.roberta.encoder.layer, caches):
            x = _layer(layer, cfg, x, allowed, cache)
        slot_mask = torch.cat([torch.ones_like(mask[:, :1]), mask], dim=1)
        if vectors is not None:
            x0 = torch.cat([vectors.to(x.dtype).unsqueeze(1), x], dim=1)
            h1 = self.decoder_layers[0](x0, _causal(slot_mask)[:, -(n + 1):], caches[-2])[:, 1:]
        else:
            h1 = self.decoder_layers[0](x, _causal(slot_mask)[:, -n:], caches[-2])
        h2 = self.decoder_layers[1](h1, allowed, caches[-1])
        word = self.roberta.embeddings.word_embeddings.weight
        return self.qarac_lm_head(h2[:, -1], word)

    @torch.no_grad()
    def generate_from_vectors(self, vectors, max_new_tokens=32, prompts=None):
        """Greedy decoding as qarac-generate does it: every sequence starts as "<s>" (followed by
        its prompt's ids, if given) and grows by its argmax token until "</s>" or max_new_tokens.
        Returns the new token ids per vector, without the final "</s>". The prefixes run once
        (left-padded to one length: no key of a pad is ever seen), then each step one position
        per sequence over every layer's cached keys and values. Raises ValueError, as
        qarac-generate refuses them, for vectors or scores that are not finite (whose argmax would
        be token 0 whatever the vector) and for more positions than the model has."""
        cfg = self.config
        vectors = torch.as_tensor(vectors).to(self.device)
        if vectors.dim() != 2 or vectors.shape[1] != cfg.hidden_size:
            raise ValueError(f"vectors of shape {tuple(vectors.shape)}: one row of {cfg.hidden_size} per sequence needed")
        if max_new_tokens < 0:
            raise ValueError(f"max_new_tokens {max_new_tokens} is negative")
        if prompts is not None and len(prompts) != len(vectors):
            raise ValueError(f"{len(prompts)} prompts for {len(vectors)} vectors")
        bad = (~torch.isfinite(vectors)).any(dim=1).nonzero().flatten().tolist()
        if bad:
            raise ValueError(f"vectors {bad} are not finite (NaN or infinity)")
        if len(vectors) == 0:
            return []
        seqs = [[cfg.bos_token_id] + [int(t) for t in (prompts[i] if prompts is not None else [])]
                for i in range(len(vectors))]
        width = max(len(s) for s in seqs)
        # The last token never runs: a sequence reads its prefix and max_new_tokens - 1 more.
        most = cfg.max_position_embeddings - cfg.pad_token_id - 1
        if width + max_new_tokens - 1 > most:
            raise ValueError(f"a prefix of {width} tokens and {max_new_tokens} new ones need "
                             f"{width + max_new_tokens - 1} positions; the model has {most}")
        device = self.device
        ids = torch.full((len(seqs), width), cfg.pad_token_id, dtype=torch.long, device=device)
        mask = torch.zeros_like(ids)
        for i, s in enumerate(seqs):
            ids[i, width - len(s):] = torch.tensor(s, device=device)
            mask[i, width - len(s):] = 1
        caches = [[] for _ in range(len(self.roberta.encoder.layer) + 2)]
        logits = self._extend(ids, mask, caches, vectors)
        new = [[] for _ in seqs]
        done = [False] * len(seqs)
        for step in range(max_new_tokens):
            rows = [i for i in range(len(seqs)) if not done[i]]
            bad = [i for i in rows if not torch.isfinite(logits[i]).all()]
            if bad:
                raise ValueError(f"the scores of vectors {bad} are not finite at their token {step + 1}: "
                                 "the weights or the vectors overflow")
            tokens = logits.argmax(-1)
            for i in rows:
                done[i] = int(tokens[i]) == cfg.eos_token_id
                new[i] += [] if done[i] else [int(tokens[i])]
            if all(done) or step + 1 == max_new_tokens:
                break
            # Finished sequences run on with their argmax too: nothing reads their rows.
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
            logits = self._extend(tokens.unsqueeze(1), mask, caches)
        return new

    @torch.no_grad()
    def generate_from_text(self, texts, encoder, tokenizer, max_new_tokens=32):
        """Encodes `texts` with a QARAC encoder (usually the answer encoder) and decodes the
        vectors: the encode_decode round trip. Returns the decoded strings. A text longer than the
        encoder's positions is cut to them (keeping </s>), as qarac-embed and qarac-generate cut it."""
        limit = encoder.config.max_position_embeddings - encoder.config.pad_token_id - 1
        batch = tokenizer(list(texts), padding=True, truncation=True, max_length=limit,
                          return_tensors="pt").to(self.device)
        vectors = encoder(**batch).pooler_output
        ids = self.generate_from_vectors(vectors, max_new_tokens)
        return [tokenizer.decode(t, skip_special_tokens=True) for t in ids]
