"""Sample kinds, their record encoding, and ArrayRecord shard sets."""
import pickle

import msgpack
import pytest

from bliperax.data import records
from bliperax.data import schema

IMG_A, IMG_B = b"\x89PNG fake a", b"\xff\xd8 fake b"

SAMPLES = [
    schema.Caption(image=IMG_A, text="A red bus.", id="c1"),
    schema.Caption(image=IMG_B, text="a <bbox>0.1, 0.2, 0.5, 0.9</bbox> dog",
                   task="grounding", id="g1"),
    schema.Caption(image=IMG_A, text="EXIT 12", task="ocr"),
    schema.Interleaved(items=["Intro.", IMG_A, "Middle.", IMG_B, IMG_A, "End."], id="d1"),
    schema.Chat(turns=["<image>\nWhat is it?", "A bus.", "Colour?", "Red."], images=[IMG_A],
                id="s1"),
    schema.Chat(turns=["<image><image>\nSame?", "No."], images=[IMG_A, IMG_B],
                system="Be brief.", id="s2"),
    schema.Chat(turns=["Hi", "Hello."]),
    schema.Preference(prompt="<image>\nDescribe.", chosen="A dog.", rejected="A cat.",
                      images=[IMG_B], id="p1"),
    schema.Text(text="Plain text.", id="t1"),
]


@pytest.mark.parametrize("sample", SAMPLES, ids=lambda s: type(s).__name__)
def test_encode_decode_round_trip(sample):
  decoded = schema.decode(schema.encode(sample))
  assert decoded == sample
  assert type(decoded) is type(sample)


def test_lists_become_tuples_and_items_keep_order():
  doc = schema.Interleaved(items=["a", IMG_A, "b", IMG_B])
  assert doc.items == ("a", IMG_A, "b", IMG_B)
  assert doc.images == (IMG_A, IMG_B) and doc.texts == ("a", "b")


def _pack(obj) -> bytes:
  return msgpack.packb(obj, use_bin_type=True)


GOOD = {"v": 1, "kind": "text", "text": "x", "id": ""}


@pytest.mark.parametrize("record, message", [
    (b"", "corrupt record"),
    (b"\xc1garbage", "corrupt record"),
    (schema.encode(SAMPLES[4])[:-3], "corrupt record"),
    (_pack([1, 2]), "not a map"),
    (_pack({**GOOD, "v": 2}), "record version 2 is not supported"),
    (_pack({k: v for k, v in GOOD.items() if k != "v"}), "record version None"),
    (_pack({**GOOD, "kind": "video"}), "unknown record kind 'video'"),
    (_pack({"v": 1, "kind": "text", "id": ""}), "missing field(s) ['text']"),
    (_pack({**GOOD, "extra": 1}), "unknown field(s) ['extra']"),
    (_pack({**GOOD, "text": 3}), "Text.text is int"),
    (_pack({"v": 1, "kind": "chat", "id": "", "turns": ["<image>q", "a"], "images": ["s"],
            "system": None}), "Chat.images[0] is str"),
])
def test_decode_names_the_problem(record, message):
  with pytest.raises(schema.RecordError) as info:
    schema.decode(record)
  assert message in str(info.value)


@pytest.mark.parametrize("make, reason", [
    (lambda: schema.Caption(image=IMG_A, text="  "), schema.EMPTY_TEXT),
    (lambda: schema.Caption(image=b"", text="x"), schema.MALFORMED_RECORD),
    (lambda: schema.Caption(image=IMG_A, text="x", task="vqa"), schema.MALFORMED_RECORD),
    (lambda: schema.Caption(image=IMG_A, text="<image> x"), schema.IMAGE_MARKER_MISMATCH),
    (lambda: schema.Caption(image=IMG_A, text="<bbox>1, 2, 3</bbox>"), schema.MALFORMED_BBOX),
    (lambda: schema.Caption(image=IMG_A, text="<bbox>1, 2, 3, 4"), schema.MALFORMED_BBOX),
    (lambda: schema.Caption(image=IMG_A, text="1, 2</bbox>"), schema.MALFORMED_BBOX),
    (lambda: schema.Interleaved(items=[IMG_A, " "]), schema.EMPTY_TEXT),
    (lambda: schema.Interleaved(items=["x <image>", IMG_A]), schema.IMAGE_MARKER_MISMATCH),
    (lambda: schema.Chat(turns=["q"]), schema.BAD_TURN_ORDER),
    (lambda: schema.Chat(turns=[]), schema.BAD_TURN_ORDER),
    (lambda: schema.Chat(turns=["q", ""]), schema.EMPTY_TEXT),
    (lambda: schema.Chat(turns=["q", "a"], images=[IMG_A]), schema.IMAGE_MARKER_MISMATCH),
    (lambda: schema.Chat(turns=["<image>q", "a <image>"], images=[IMG_A]),
     schema.IMAGE_MARKER_MISMATCH),
    (lambda: schema.Chat(turns="qa"), schema.MALFORMED_RECORD),
    (lambda: schema.Preference(prompt="q", chosen="a", rejected=" a "), schema.IDENTICAL_PAIR),
    (lambda: schema.Preference(prompt="q", chosen="a", rejected="b", images=[IMG_A]),
     schema.IMAGE_MARKER_MISMATCH),
    (lambda: schema.Text(text=""), schema.EMPTY_TEXT),
])
def test_invalid_samples_carry_their_reason(make, reason):
  with pytest.raises(schema.InvalidSample) as info:
    make()
  assert info.value.reason == reason


def test_user_turn_of_images_alone_is_valid():
  schema.Chat(turns=["<image>", "A cat."], images=[IMG_A])


def _write_set(directory, prefix, n, samples, overwrite=False):
  with records.ShardSetWriter(directory, prefix, n, overwrite=overwrite) as writer:
    for s in samples:
      writer.write(schema.encode(s))
    return writer.commit()


def test_shard_set_round_robin_and_random_access(tmp_path):
  shards = _write_set(tmp_path, "train", 2, SAMPLES)
  assert [p.name for p, _ in shards] == ["train-00000-of-00002.array_record",
                                         "train-00001-of-00002.array_record"]
  assert [n for _, n in shards] == [5, 4]
  source = records.open_shards(tmp_path)
  assert len(source) == len(SAMPLES)
  # Shard 0 holds samples 0, 2, 4, ...; shard 1 holds 1, 3, ...
  expected = SAMPLES[0::2] + SAMPLES[1::2]
  assert [schema.decode(source[i]) for i in range(len(source))] == expected
  assert list(records.read_samples(str(tmp_path / "train-*"))) == expected
  # One shard given explicitly (a host's subset) is accepted as it is.
  assert len(records.open_shards(shards[1][0])) == 4
  # Grain workers get the source pickled.
  clone = pickle.loads(pickle.dumps(source))
  assert schema.decode(clone[3]) == expected[3]
  assert not list(tmp_path.glob("*.tmp"))


def test_unfinished_shards_are_never_read(tmp_path):
  writer = records.ShardSetWriter(tmp_path, "train", 2)
  writer.write(schema.encode(SAMPLES[0]))
  # A killed build: the .tmp files exist, no shard was renamed.
  assert len(list(tmp_path.glob("*.array_record.tmp"))) == 2
  with pytest.raises(FileNotFoundError, match="no .array_record shards"):
    records.open_shards(tmp_path)
  with pytest.raises(ValueError, match="unfinished shard"):
    records.open_shards(next(tmp_path.glob("*.tmp")))
  writer.abort()
  assert not list(tmp_path.iterdir())


def test_stale_tmp_files_of_the_prefix_only_are_cleared(tmp_path):
  for name in ("train-00000-of-00002", "train-x-00000-of-00001"):
    (tmp_path / f"{name}.array_record.tmp").write_bytes(b"half")
  records.ShardSetWriter(tmp_path, "train", 1).abort()
  assert [p.name for p in tmp_path.iterdir()] == ["train-x-00000-of-00001.array_record.tmp"]


def test_failure_while_writing_leaves_nothing(tmp_path):
  with pytest.raises(RuntimeError):
    with records.ShardSetWriter(tmp_path, "train", 3) as writer:
      writer.write(schema.encode(SAMPLES[0]))
      raise RuntimeError("reader crashed")
  assert not list(tmp_path.iterdir())


def test_incomplete_set_is_refused(tmp_path):
  shards = _write_set(tmp_path, "train", 3, SAMPLES)
  shards[1][0].unlink()
  with pytest.raises(FileNotFoundError, match=r"missing shard\(s\) \[1\]"):
    records.open_shards(tmp_path)


def test_existing_set_needs_overwrite_and_is_replaced_whole(tmp_path):
  _write_set(tmp_path, "train", 3, SAMPLES)
  with pytest.raises(FileExistsError, match="overwrite"):
    records.ShardSetWriter(tmp_path, "train", 2)
  _write_set(tmp_path, "train-extra", 1, SAMPLES[:1])  # another prefix: untouched
  _write_set(tmp_path, "train", 2, SAMPLES[:2], overwrite=True)
  names = sorted(p.name for p in tmp_path.iterdir())
  assert names == ["train-00000-of-00002.array_record", "train-00001-of-00002.array_record",
                   "train-extra-00000-of-00001.array_record"]
  assert len(records.open_shards(str(tmp_path / "train-0*"))) == 2


def test_empty_set_is_readable(tmp_path):
  _write_set(tmp_path, "empty", 2, [])
  assert len(records.open_shards(tmp_path)) == 0
