"""Tiny random Hugging Face backbones, built fully offline, for fast tests.

Each builder saves config + weights (with the LM head) + a tokenizer built in code from a
small English word list, so every Auto* class loads the folder without hub access.
"""

from __future__ import annotations

import json
import os
import pathlib
import string

import torch
import transformers as tf
from tokenizers import Tokenizer, models, pre_tokenizers, trainers

ARCHITECTURES = ("bert", "roberta", "distilbert", "mpnet", "gpt2", "llama", "t5")

# ~300 lowercase words from short reviews and news, roughly most-common first (BPE merges
# follow this order, so the earliest words become single tokens first).
_WORDS = list(dict.fromkeys("""
the a an and or but not no so if then than as at by for from in into of off on out over to
up with without about after before again all any both each more most other some such only
own same too very just can will would should could may might must do does did done have has
had be is am are was were been being it its i me my we our you your he him his she her they
them their this that these those there here what which who when where why how because while
until during through between under movie film story plot acting actor actors actress cast
director scene scenes character characters script ending music show series book product
quality price service time money work works worked buy bought use used love loved like liked
hate hated enjoy enjoyed recommend waste wasted boring fun funny great good bad terrible
awful excellent amazing wonderful best worst better worse fine nice poor perfect brilliant
beautiful horrible stupid dull interesting entertaining disappointing disappointed
masterpiece mess favorite well really pretty quite even still never ever always also much
many little lot one two three four five ten first last new old long short big small high low
real true whole positive negative happy sad sorry glad wrong right easy hard cheap broken
said says year years people government president state states country world city police news
report company market percent million billion week day days today yesterday official
officials minister war election team game season win won lost loss second home court law
public group national international business economy stock shares bank oil deal talks
get got make made go went see saw seen know knew think thought take took come came give gave
find found tell told say feel felt look looked want wanted try tried seem seemed watch
watched read wait waiting returned return star stars minutes hours again instead nothing
something everything anything way thing things life man woman world family friends kids
""".split()))
_CHARS = string.ascii_lowercase + string.digits + string.punctuation
_SUFFIXES = ("s", "es", "ed", "ing", "ly", "er", "est", "'s")  # common WordPiece continuations
_MAX_LEN = 512  # model_max_length of every tokenizer, and positions as in BERT
_TOK_KW = dict(model_max_length=_MAX_LEN)
_BERT_SIZES = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                   intermediate_size=64, max_position_embeddings=_MAX_LEN)


def _wordpiece_vocab(specials: list[str]) -> dict[str, int]:
    """Specials, single chars and ##chars (so any ASCII word tokenizes), then whole words."""
    pieces = [*specials, *_CHARS, *("##" + c for c in string.ascii_lowercase + string.digits),
              *("##" + s for s in _SUFFIXES), *_WORDS]
    return {p: i for i, p in enumerate(dict.fromkeys(pieces))}


def _train_bpe(pre_tokenizer, alphabet: list[str], specials: list[str], vocab_size: int):
    """Train a small BPE in memory and return (vocab, merges) for the transformers class.

    Training (rather than hand-writing merges) keeps the merge ranks consistent, so words
    always re-assemble into the learned tokens. The trainer is deterministic.
    """
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizer
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials,
                                  initial_alphabet=alphabet, show_progress=False)
    # Line k holds the first k words: a Zipf-like frequency without a real corpus. Bare words
    # (once each) give sentence-initial words, which have no space prefix, a chance too.
    corpus = [" ".join(_WORDS[:k]) for k in range(1, len(_WORDS) + 1)] + _WORDS
    tok.train_from_iterator(corpus, trainer)
    model = json.loads(tok.to_str())["model"]
    return model["vocab"], [tuple(m.split(" ")) if isinstance(m, str) else tuple(m)
                            for m in model["merges"]]


def _byte_level_bpe(specials: list[str]):
    """GPT-2 style: all 256 byte-level chars are in the vocab, so any text tokenizes."""
    return _train_bpe(pre_tokenizers.ByteLevel(add_prefix_space=False),
                      pre_tokenizers.ByteLevel.alphabet(), specials, vocab_size=800)


def _bert_tok(cls=tf.BertTokenizer):
    return cls(vocab=_wordpiece_vocab(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]), **_TOK_KW)


def _mpnet_tok():
    vocab = _wordpiece_vocab(["<s>", "<pad>", "</s>", "[UNK]"])
    vocab["<mask>"] = len(vocab)  # last, like the real MPNet vocab
    return tf.MPNetTokenizer(vocab=vocab, **_TOK_KW)


def _gpt2_tok():
    vocab, merges = _byte_level_bpe([])
    vocab["<|endoftext|>"] = len(vocab)  # last, like GPT-2; no pad token on purpose
    return tf.GPT2Tokenizer(vocab=vocab, merges=merges, **_TOK_KW)


def _roberta_tok():
    vocab, merges = _byte_level_bpe(["<s>", "<pad>", "</s>", "<unk>"])
    vocab["<mask>"] = len(vocab)
    return tf.RobertaTokenizer(vocab=vocab, merges=merges, **_TOK_KW)


def _llama_tok():
    # SentencePiece-style BPE: <unk> <s> </s>, then <0x00>..<0xFF> for byte fallback (so
    # any text, even non-ASCII, tokenizes), then printable ASCII + learned "▁word" merges.
    specials = ["<unk>", "<s>", "</s>", *(f"<0x{b:02X}>" for b in range(256))]
    alphabet = [c for c in string.printable if not c.isspace()] + ["▁"]
    # split=True while training so merges never cross words (SentencePiece behaviour).
    pre = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always", split=True)
    vocab, merges = _train_bpe(pre, alphabet, specials, vocab_size=900)
    # Llama has no pad token; reuse <unk> (common practice) so padding works out of the box.
    # Real Llama checkpoints prepend <s>; v5 defaults add_bos_token to False, so ask for it.
    return tf.LlamaTokenizer(vocab=vocab, merges=merges, pad_token="<unk>", add_bos_token=True,
                             **_TOK_KW)


def _t5_tok():
    # Unigram: a whole "▁word" piece scores far above spelling it out, while "▁" plus single
    # characters (both cases: T5 does not lowercase) keep any ASCII text free of <unk>.
    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -4.0)]
    pieces += [("▁" + w, -3.0 - 0.001 * i) for i, w in enumerate(_WORDS)]
    pieces += [(c, -8.0) for c in _CHARS + string.ascii_uppercase]
    return tf.T5Tokenizer(vocab=pieces, extra_ids=2, **_TOK_KW)


def _roberta_like_positions(pad_id: int) -> int:
    # RoBERTa/MPNet number positions from pad_id + 1, so 128 tokens need 128 + pad_id + 1 rows.
    return _MAX_LEN + pad_id + 1


def _build_model(arch: str, tok) -> tf.PreTrainedModel:
    n = len(tok)
    if arch == "bert":
        return tf.BertForMaskedLM(tf.BertConfig(vocab_size=n, pad_token_id=tok.pad_token_id,
                                                **_BERT_SIZES))
    if arch == "distilbert":
        return tf.DistilBertForMaskedLM(tf.DistilBertConfig(
            vocab_size=n, dim=32, n_layers=2, n_heads=4, hidden_dim=64,
            max_position_embeddings=_MAX_LEN, pad_token_id=tok.pad_token_id))
    if arch in ("roberta", "mpnet"):
        cfg_cls, model_cls = ((tf.RobertaConfig, tf.RobertaForMaskedLM) if arch == "roberta"
                              else (tf.MPNetConfig, tf.MPNetForMaskedLM))
        sizes = {**_BERT_SIZES,
                 "max_position_embeddings": _roberta_like_positions(tok.pad_token_id)}
        return model_cls(cfg_cls(vocab_size=n, pad_token_id=tok.pad_token_id,
                                 bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                                 **sizes))
    if arch == "gpt2":
        return tf.GPT2LMHeadModel(tf.GPT2Config(
            vocab_size=n, n_positions=_MAX_LEN, n_embd=32, n_layer=2, n_head=4, n_inner=64,
            bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id))
    if arch == "llama":
        # Grouped-query attention: 4 query heads share 2 key/value heads.
        return tf.LlamaForCausalLM(tf.LlamaConfig(
            vocab_size=n, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, head_dim=8,
            max_position_embeddings=_MAX_LEN, pad_token_id=tok.pad_token_id,
            bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id))
    if arch == "t5":
        return tf.T5ForConditionalGeneration(tf.T5Config(
            vocab_size=n, d_model=32, d_kv=8, num_heads=4, d_ff=64, num_layers=2,
            num_decoder_layers=2, pad_token_id=tok.pad_token_id,
            eos_token_id=tok.eos_token_id, decoder_start_token_id=tok.pad_token_id))
    raise ValueError(f"unknown arch {arch!r}; expected one of {ARCHITECTURES}")


_TOKENIZERS = {"bert": _bert_tok, "distilbert": lambda: _bert_tok(tf.DistilBertTokenizer),
               "mpnet": _mpnet_tok, "roberta": _roberta_tok, "gpt2": _gpt2_tok,
               "llama": _llama_tok, "t5": _t5_tok}


def build_tiny_backbone(arch: str, folder: str | os.PathLike) -> pathlib.Path:
    """Save a tiny random model of `arch` (config + weights + tokenizer) into folder, return the folder."""
    if arch not in _TOKENIZERS:
        raise ValueError(f"unknown arch {arch!r}; expected one of {ARCHITECTURES}")
    folder = pathlib.Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tok = _TOKENIZERS[arch]()
    # Deterministic weights, drawn from an RNG of their own: a test that seeds and then asks for a backbone
    # draws the same numbers whether or not an earlier test built it.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = _build_model(arch, tok)
    # Save the LM-head class so MaskedLM/CausalLM/Seq2SeqLM load with no fresh head weights.
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder
