"""Small real tokenizers (trained with the `tokenizers` library) for the tiny fixtures.

Every builder returns (tokenizer, special_token_ids). Each tokenizer.json is saved with a
truncation AND a padding setting in the file (SHIPPED_TRUNCATION / SHIPPED_PADDING) that a
loader must override (truncate at the model's max_seq_length, no padding): honouring them
would pad every single text to 160 tokens and, for RoBERTa-style position ids, overflow
the position table.
"""
from __future__ import annotations

import math

from tokenizers import AddedToken, Regex, Tokenizer, decoders, normalizers, pre_tokenizers, processors, trainers
from tokenizers.models import BPE, Unigram, WordPiece

from tiny_corpus import corpus

SHIPPED_TRUNCATION = 512
SHIPPED_PADDING = 160

# Qwen2 / Qwen3 pre-tokenizer regex (as in their tokenizer.json).
QWEN_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)


def _ship_settings(tok: Tokenizer, pad_token: str, direction: str = "right") -> None:
    tok.enable_truncation(max_length=SHIPPED_TRUNCATION)
    tok.enable_padding(
        length=SHIPPED_PADDING, pad_id=tok.token_to_id(pad_token), pad_token=pad_token, direction=direction
    )


def shipped_settings_note(direction: str = "right") -> dict:
    return {
        "truncation_max_length": SHIPPED_TRUNCATION,
        "padding_fixed_length": SHIPPED_PADDING,
        "padding_direction": direction,
        "note": "tokenizer.json ships these; a loader must override them: truncate at max_length, no padding",
    }


def _ids(tok: Tokenizer, names) -> dict[str, int]:
    out = {}
    for n in names:
        i = tok.token_to_id(n)
        assert i is not None, n
        out[n] = i
    return out


def _bpe_vocab(normalizer, pre_tokenizer, vocab_size, specials) -> dict[str, int]:
    """Train a BPE on corpus() and return its vocab (token -> id). With a fixed sorted initial
    alphabet the `tokenizers` BPE trainer is deterministic (its WordPiece and Unigram trainers
    are not: hash-order tie-breaking / parallel EM), so WordPiece and Unigram vocabularies are
    derived from a BPE run."""
    t = Tokenizer(BPE())
    t.normalizer = normalizer
    t.pre_tokenizer = pre_tokenizer
    # A fixed, sorted initial alphabet makes the trainer's tie-breaking independent of hash order.
    alphabet = sorted({ch for line in corpus() for ch in normalizer.normalize_str(line) if not ch.isspace()})
    tr = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials, initial_alphabet=alphabet, show_progress=False)
    t.train_from_iterator(corpus(), tr)
    return t


def _corpus_words(normalizer, pre_tokenizer) -> dict[str, int]:
    words: dict[str, int] = {}
    for line in corpus():
        for w, _ in pre_tokenizer.pre_tokenize_str(normalizer.normalize_str(line)):
            words[w] = words.get(w, 0) + 1
    return words


def _wordpiece_vocab(normalizer, pre_tokenizer, vocab_size, specials) -> dict[str, int]:
    """Deterministic WordPiece vocabulary: segment every corpus word with a (deterministic) BPE,
    call the first piece a word-initial piece and the others "##" continuations, then keep
    specials + every single character (both forms) + the most frequent pieces (ties by string)."""
    bpe = _bpe_vocab(normalizer, pre_tokenizer, vocab_size, specials)
    counts: dict[str, int] = {}
    chars: set[str] = set()
    for w, n in _corpus_words(normalizer, pre_tokenizer).items():
        chars.update(w)
        for k, tk in enumerate(bpe.model.tokenize(w)):
            piece = tk.value if k == 0 else "##" + tk.value
            counts[piece] = counts.get(piece, 0) + n
    out = list(specials) + sorted(chars) + sorted("##" + c for c in chars)
    seen = set(out)
    for piece, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])):
        if len(out) >= vocab_size:
            break
        if piece not in seen:
            seen.add(piece)
            out.append(piece)
    return {p: i for i, p in enumerate(out)}


def _unigram_model(normalizer, pre_tokenizer, vocab_size, specials, unk_token) -> Unigram:
    """SentencePiece-style Unigram model: pieces = a BPE vocabulary trained with the same
    Metaspace pre-tokenizer; score(piece) = log(relative frequency of the piece as a substring
    of the pre-tokenized corpus words). Deterministic (plain counting), unlike UnigramTrainer."""
    vocab = _bpe_vocab(normalizer, pre_tokenizer, vocab_size, specials).get_vocab(with_added_tokens=False)
    words = _corpus_words(normalizer, pre_tokenizer)
    pieces = [p for p, _ in sorted(vocab.items(), key=lambda kv: kv[1]) if p not in specials]
    counts = {}
    for p in pieces:
        c = 0
        for w, n in words.items():
            c += n * w.count(p)
        counts[p] = max(c, 1)
    total = float(sum(counts.values()))
    entries = [(s, 0.0) for s in specials] + [(p, round(math.log(counts[p] / total), 6)) for p in pieces]
    return Unigram(entries, unk_id=specials.index(unk_token), byte_fallback=False)


# --------------------------------------------------------------------------------------
def wordpiece_bert(vocab_size: int = 1000) -> tuple[Tokenizer, dict[str, int]]:
    """BERT-uncased style WordPiece. Special ids deliberately NOT BERT's 0/100/101/102/103
    nor tiny-bert's: [PAD]=0 [SEP]=1 [CLS]=2 [MASK]=3 [UNK]=4."""
    specials = ["[PAD]", "[SEP]", "[CLS]", "[MASK]", "[UNK]"]
    tok = Tokenizer(WordPiece(unk_token="[UNK]", continuing_subword_prefix="##", max_input_chars_per_word=100))
    tok.normalizer = normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=True, strip_accents=None, lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece(prefix="##", cleanup=True)
    vocab = _wordpiece_vocab(tok.normalizer, tok.pre_tokenizer, vocab_size, specials)
    tok.model = WordPiece(vocab, unk_token="[UNK]",
                          continuing_subword_prefix="##", max_input_chars_per_word=100)
    ids = _ids(tok, specials)
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", ids["[CLS]"]), ("[SEP]", ids["[SEP]"])],
    )
    _ship_settings(tok, "[PAD]")
    return tok, ids


def wordpiece_mpnet(vocab_size: int = 1000) -> tuple[Tokenizer, dict[str, int]]:
    """MPNet style: lower-cased WordPiece with RoBERTa-like specials <s>=0 <pad>=1 </s>=2 <unk>=3,
    <mask> appended last; template <s> A </s> and pair <s> A </s></s> B </s> (type ids all 0)."""
    specials = ["<s>", "<pad>", "</s>", "<unk>"]
    tok = Tokenizer(WordPiece(unk_token="<unk>", continuing_subword_prefix="##", max_input_chars_per_word=100))
    tok.normalizer = normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=True, strip_accents=None, lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece(prefix="##", cleanup=True)
    vocab = _wordpiece_vocab(tok.normalizer, tok.pre_tokenizer, vocab_size, specials)
    tok.model = WordPiece(vocab, unk_token="<unk>",
                          continuing_subword_prefix="##", max_input_chars_per_word=100)
    tok.add_special_tokens([AddedToken("<mask>", lstrip=True, special=True)])
    ids = _ids(tok, specials + ["<mask>"])
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>",
        pair="<s> $A </s> </s> $B </s>",
        special_tokens=[("<s>", ids["<s>"]), ("</s>", ids["</s>"])],
    )
    _ship_settings(tok, "<pad>")
    return tok, ids


def unigram_xlmr(vocab_size: int = 1000) -> tuple[Tokenizer, dict[str, int]]:
    """XLM-R / CamemBERT style SentencePiece-Unigram with the Metaspace pre-tokenizer.
    <s>=0 <pad>=1 </s>=2 <unk>=3 (as in XLM-R), <mask> appended last.
    Template <s> A </s>, pair <s> A </s></s> B </s> (type ids all 0)."""
    specials = ["<s>", "<pad>", "</s>", "<unk>"]
    tok = Tokenizer(Unigram())
    tok.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Replace(Regex(" {2,}"), " ")])
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always", split=True)
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always", split=True)
    tok.model = _unigram_model(tok.normalizer, tok.pre_tokenizer, vocab_size, specials, unk_token="<unk>")
    tok.add_special_tokens([AddedToken("<mask>", lstrip=True, special=True)])
    ids = _ids(tok, specials + ["<mask>"])
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>",
        pair="<s> $A </s> </s> $B </s>",
        special_tokens=[("<s>", ids["<s>"]), ("</s>", ids["</s>"])],
    )
    _ship_settings(tok, "<pad>")
    return tok, ids


def bpe_roberta(vocab_size: int = 1000) -> tuple[Tokenizer, dict[str, int]]:
    """RoBERTa style byte-level BPE with RobertaProcessing (<s> A </s></s> B </s>).
    <s>=0 <pad>=1 </s>=2 <unk>=3, <mask> appended last."""
    specials = ["<s>", "<pad>", "</s>", "<unk>"]
    tok = Tokenizer(BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tr = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    tok.train_from_iterator(corpus(), tr)
    tok.add_special_tokens([AddedToken("<mask>", lstrip=True, special=True)])
    ids = _ids(tok, specials + ["<mask>"])
    tok.post_processor = processors.RobertaProcessing(
        sep=("</s>", ids["</s>"]), cls=("<s>", ids["<s>"]), trim_offsets=True, add_prefix_space=False
    )
    _ship_settings(tok, "<pad>")
    return tok, ids


def bpe_modernbert(vocab_size: int = 1000) -> tuple[Tokenizer, dict[str, int]]:
    """ModernBERT style: byte-level BPE whose special tokens come AFTER the learned vocab
    ([UNK] [CLS] [SEP] [PAD] [MASK], like ModernBERT's 50280..50284); [CLS] A [SEP] (B [SEP])."""
    specials = ["[UNK]", "[CLS]", "[SEP]", "[PAD]", "[MASK]"]
    tok = Tokenizer(BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tr = trainers.BpeTrainer(vocab_size=vocab_size, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(corpus(), tr)
    tok.add_special_tokens([AddedToken(s, special=True, lstrip=(s == "[MASK]")) for s in specials])
    ids = _ids(tok, specials)
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B [SEP]",
        special_tokens=[("[CLS]", ids["[CLS]"]), ("[SEP]", ids["[SEP]"])],
    )
    _ship_settings(tok, "[PAD]")
    return tok, ids


def _bpe_decoder_base(vocab_size: int, trainer_specials: list[str]) -> Tokenizer:
    tok = Tokenizer(BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN_SPLIT), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    tr = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=trainer_specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus(), tr)
    return tok


def bpe_qwen(vocab_size: int = 1000) -> tuple[Tokenizer, dict[str, int]]:
    """Qwen2/Qwen3 style byte-level BPE (Qwen's split regex, NFC). Specials appended after the
    learned vocab: <|endoftext|> <|im_start|> <|im_end|>. The post-processor APPENDS
    <|endoftext|> to every sequence (Qwen3-Embedding style): single "$A <|endoftext|>",
    pair "$A <|endoftext|> $B <|endoftext|>". No BOS."""
    tok = _bpe_decoder_base(vocab_size, [])
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    tok.add_special_tokens([AddedToken(s, special=True) for s in specials])
    ids = _ids(tok, specials)
    tok.post_processor = processors.TemplateProcessing(
        single="$A <|endoftext|>",
        pair="$A <|endoftext|> $B <|endoftext|>",
        special_tokens=[("<|endoftext|>", ids["<|endoftext|>"])],
    )
    for w in ("yes", "no"):
        enc = tok.encode(w, add_special_tokens=False)
        assert len(enc.ids) == 1, (w, enc.tokens)
    _ship_settings(tok, "<|endoftext|>", direction="left")
    return tok, ids


def bpe_llama(vocab_size: int = 1000, bos: str = "<|begin_of_text|>", eos: str = "<|end_of_text|>") -> tuple[Tokenizer, dict[str, int]]:
    """Llama-3 / Mistral style for the embedders: same byte-level BPE, specials appended after
    the vocab, post-processor PREPENDS BOS and APPENDS EOS ("{bos} $A {eos}")."""
    tok = _bpe_decoder_base(vocab_size, [])
    specials = [bos, eos]
    tok.add_special_tokens([AddedToken(s, special=True) for s in specials])
    ids = _ids(tok, specials)
    tok.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A {eos}",
        pair=f"{bos} $A {eos} {bos} $B {eos}",
        special_tokens=[(bos, ids[bos]), (eos, ids[eos])],
    )
    _ship_settings(tok, eos, direction="left")
    return tok, ids


def bpe_gemma(vocab_size: int = 1000) -> tuple[Tokenizer, dict[str, int]]:
    """EmbeddingGemma style ids <pad>=0 <eos>=1 <bos>=2 <unk>=3 (specials FIRST, as Gemma's),
    byte-level BPE, post-processor "<bos> $A <eos>"."""
    specials = ["<pad>", "<eos>", "<bos>", "<unk>"]
    tok = _bpe_decoder_base(vocab_size, specials)
    ids = _ids(tok, specials)
    tok.post_processor = processors.TemplateProcessing(
        single="<bos> $A <eos>",
        pair="<bos> $A <eos> $B <eos>",
        special_tokens=[("<bos>", ids["<bos>"]), ("<eos>", ids["<eos>"])],
    )
    _ship_settings(tok, "<pad>")
    return tok, ids
