"""tools/build_shards.py: every format round-trips; every skip is counted with its reason."""
import base64
import io
import json
import pathlib
import subprocess
import sys
import tarfile

import pytest
from PIL import Image

from bliperax.data import records
from bliperax.data import schema
from bliperax.data import sources
from bliperax.data.sources import base
from bliperax.data.sources import build

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _image(color, fmt) -> bytes:
  out = io.BytesIO()
  Image.new("RGB", (6, 4), color).save(out, fmt)
  return out.getvalue()


RED, GREEN, BLUE = _image((255, 0, 0), "PNG"), _image((0, 255, 0), "JPEG"), _image(
    (0, 0, 255), "PNG")
CORRUPT = RED[:40]  # a PNG cut short: PIL identifies it, decoding fails


@pytest.fixture
def image_dir(tmp_path):
  folder = tmp_path / "img"
  (folder / "sub").mkdir(parents=True)
  (folder / "red.png").write_bytes(RED)
  (folder / "sub" / "green.jpg").write_bytes(GREEN)
  (folder / "blue.png").write_bytes(BLUE)
  (folder / "corrupt.png").write_bytes(CORRUPT)
  return folder


def run_build(fmt, inputs, out, num_shards=1, workers=1, build_options=None, **reader_kw):
  """Builds shards in-process; returns (summary, samples in shard order)."""
  reader = sources.READERS[fmt]
  files = base.expand_inputs(str(inputs), reader.SUFFIXES)
  with records.ShardSetWriter(out, fmt, num_shards) as writer:
    tally = build.build(reader.read, files, writer, base.ReaderOptions(**reader_kw),
                        build_options or build.BuildOptions(), workers=workers)
    writer.commit()
  return tally.summary(), list(records.read_samples(out))


def _tar(path, members):
  with tarfile.open(path, "w") as tar:
    for name, data in members:
      info = tarfile.TarInfo(name)
      info.size = len(data)
      tar.addfile(info, io.BytesIO(data))


def _jsonl(path, rows):
  path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))


def test_webdataset(tmp_path):
  _tar(tmp_path / "00000.tar", [
      ("part/k1.jpg", GREEN), ("part/k1.txt", "A green <bbox>1, 2, 3, 4</bbox> box.".encode()),
      ("k2.png", RED), ("k2.json", json.dumps({"caption": "Red.", "uid": "u2"}).encode()),
      ("k3.png", CORRUPT), ("k3.txt", b"broken image"),
      ("k4.txt", b"no image"),
      ("k5.png", RED), ("k5.json", b'{"other": 1}'),
      ("k6.png", RED), ("k6.json", b"{not json"),
      ("k7.png", BLUE), ("k7.txt", b"a <bbox>1, 2</bbox>"),
  ])
  _tar(tmp_path / "00001.tar", [("k1.png", BLUE), ("k1.txt", "Blue – ünïcode.".encode())])
  summary, samples = run_build("webdataset", tmp_path, tmp_path / "out", task="grounding",
                               id_field="uid")
  assert samples == [
      schema.Caption(image=GREEN, text="A green <bbox>1, 2, 3, 4</bbox> box.",
                     task="grounding", id="00000.tar/part/k1"),
      schema.Caption(image=RED, text="Red.", task="grounding", id="u2"),
      schema.Caption(image=BLUE, text="Blue – ünïcode.", task="grounding", id="00001.tar/k1"),
  ]
  assert summary["skipped"] == {"empty_text": 1, "malformed_bbox": 1, "malformed_record": 1,
                                "missing_image": 1, "unreadable_image": 1}
  assert summary["samples_written"] == 3 and summary["samples_skipped"] == 5
  assert summary["skip_examples"]["missing_image"][0].startswith("00000.tar/k4:")


def test_webdataset_truncated_tar_is_an_input_error(tmp_path):
  _tar(tmp_path / "a.tar", [("k1.png", RED), ("k1.txt", b"one"), ("k2.png", BLUE),
                            ("k2.txt", b"two"), ("k3.png", GREEN), ("k3.txt", b"three")])
  data = (tmp_path / "a.tar").read_bytes()
  (tmp_path / "a.tar").write_bytes(data[:512 * 6 + 100])  # inside k2's text header
  _tar(tmp_path / "b.tar", [("k1.png", RED), ("k1.txt", b"next file")])
  summary, samples = run_build("webdataset", tmp_path, tmp_path / "out")
  assert [s.text for s in samples] == ["one", "next file"]
  assert summary["skipped"] == {"truncated_input": 1}
  assert [e["file"] for e in summary["input_errors"]] == [str(tmp_path / "a.tar")]


def test_parquet(tmp_path, image_dir):
  import pyarrow as pa  # pylint: disable=g-import-not-at-top
  import pyarrow.parquet as pq  # pylint: disable=g-import-not-at-top
  pq.write_table(pa.table({"jpg": [RED, None, GREEN], "txt": ["Red.", "No image.", None],
                           "key": ["a", "b", "c"]}), tmp_path / "1.parquet")
  hf_image = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
  pq.write_table(pa.table({
      "jpg": pa.array([{"bytes": BLUE, "path": None}, {"bytes": None, "path": "sub/green.jpg"},
                       {"bytes": None, "path": "gone.jpg"}, {"bytes": CORRUPT, "path": None}],
                      hf_image),
      "txt": ["Blue.", "Green.", "Missing.", "Corrupt."], "key": ["d", "e", "f", "g"],
  }), tmp_path / "2.parquet")
  summary, samples = run_build("parquet", f"{tmp_path}/1.parquet,{tmp_path}/2.parquet",
                               tmp_path / "out", image_dir=str(image_dir), image_field="jpg",
                               text_field="txt", id_field="key")
  assert samples == [schema.Caption(image=RED, text="Red.", id="a"),
                     schema.Caption(image=BLUE, text="Blue.", id="d"),
                     schema.Caption(image=GREEN, text="Green.", id="e")]
  assert summary["skipped"] == {"empty_text": 1, "missing_image": 1, "missing_image_file": 1,
                                "unreadable_image": 1}


def test_parquet_text_only_and_missing_column(tmp_path):
  import pyarrow as pa  # pylint: disable=g-import-not-at-top
  import pyarrow.parquet as pq  # pylint: disable=g-import-not-at-top
  pq.write_table(pa.table({"caption": ["One.", " ", "Two."]}), tmp_path / "t.parquet")
  summary, samples = run_build("parquet", tmp_path / "t.parquet", tmp_path / "out",
                               image_field="")
  assert samples == [schema.Text(text="One.", id="t.parquet#0"),
                     schema.Text(text="Two.", id="t.parquet#2")]
  assert summary["skipped"] == {"empty_text": 1}
  summary, samples = run_build("parquet", tmp_path / "t.parquet", tmp_path / "out2")
  assert not samples
  assert "no column(s) ['image']" in summary["input_errors"][0]["error"]


def _turns(*texts):
  return [{"from": "human" if i % 2 == 0 else "gpt", "value": t} for i, t in enumerate(texts)]


LLAVA = [
    {"id": "single", "image": "red.png", "conversations": _turns("<image>\nWhat?", "Red.",
                                                                 "Sure?", "Yes.")},
    {"id": "multi", "images": ["sub/green.jpg", "blue.png"],
     "conversations": [{"from": "system", "value": "Be brief."}] + _turns(
         "<image> and <image>: same?", "No.")},
    {"id": "text", "conversations": _turns("Hi.", "Hello.")},
    {"id": "nofile", "image": "gone.jpg", "conversations": _turns("<image>\nQ", "A")},
    {"id": "corrupt", "image": "corrupt.png", "conversations": _turns("<image>\nQ", "A")},
    {"id": "url", "image": "https://x.org/a.jpg", "conversations": _turns("<image>\nQ", "A")},
    {"id": "markers", "image": "red.png", "conversations": _turns("Q without marker", "A")},
    {"id": "order", "conversations": _turns("Q", "A")[::-1]},
    {"id": "dangling", "conversations": _turns("Q", "A", "Q2")},
    {"id": "empty", "conversations": _turns("Q", " ")},
    "not an object",
    {"id": "noconv"},
]
LLAVA_EXPECTED = [
    schema.Chat(turns=["<image>\nWhat?", "Red.", "Sure?", "Yes."], images=[RED], id="single"),
    schema.Chat(turns=["<image> and <image>: same?", "No."], images=[GREEN, BLUE],
                system="Be brief.", id="multi"),
    schema.Chat(turns=["Hi.", "Hello."], id="text"),
]
LLAVA_SKIPS = {"bad_turn_order": 2, "empty_text": 1, "image_marker_mismatch": 1,
               "image_not_fetchable": 1, "malformed_record": 2, "missing_image_file": 1,
               "unreadable_image": 1}


def test_llava_json_array(tmp_path, image_dir):
  (tmp_path / "data.json").write_text(json.dumps(LLAVA, indent=2))
  summary, samples = run_build("llava", tmp_path / "data.json", tmp_path / "out",
                               image_dir=str(image_dir))
  assert samples == LLAVA_EXPECTED
  assert summary["skipped"] == LLAVA_SKIPS
  assert summary["skip_examples"]["malformed_record"][0].startswith("data.json[10]:")


def test_llava_jsonl_with_a_bad_line(tmp_path, image_dir):
  _jsonl(tmp_path / "data.jsonl", LLAVA[:3] + ["{broken", LLAVA[3]])
  summary, samples = run_build("llava", tmp_path / "data.jsonl", tmp_path / "out",
                               image_dir=str(image_dir))
  assert samples == LLAVA_EXPECTED
  assert summary["skipped"] == {"malformed_record": 1, "missing_image_file": 1}
  assert summary["skip_examples"]["malformed_record"][0].startswith("data.jsonl:4:")


def test_llava_syntax_error_keeps_what_came_before(tmp_path, image_dir):
  text = json.dumps(LLAVA[:3])
  (tmp_path / "data.json").write_text(text[:-1] + ', {"id": oops}]')
  summary, samples = run_build("llava", tmp_path / "data.json", tmp_path / "out",
                               image_dir=str(image_dir))
  assert samples == LLAVA_EXPECTED
  assert "JSON syntax error in element 3" in summary["input_errors"][0]["error"]


def test_workers_write_the_same_shards(tmp_path, image_dir):
  (tmp_path / "data.json").write_text(json.dumps(LLAVA * 3))
  for workers in (1, 2):
    run_build("llava", tmp_path / "data.json", tmp_path / f"out{workers}", num_shards=2,
              workers=workers, image_dir=str(image_dir))
  for name in ("llava-00000-of-00002.array_record", "llava-00001-of-00002.array_record"):
    assert (tmp_path / "out1" / name).read_bytes() == (tmp_path / "out2" / name).read_bytes()


def _data_uri(data):
  return "data:image/png;base64," + base64.b64encode(data).decode()


def test_interleaved(tmp_path, image_dir):
  _jsonl(tmp_path / "docs.jsonl", [
      {"id": "d1", "texts": ["Intro.", None, "Middle.", None, None, "End."],
       "images": [None, "red.png", None, _data_uri(GREEN),
                  {"bytes": base64.b64encode(BLUE).decode()}, None]},
      {"texts": ["Only text.", None], "images": [None, None]},
      {"id": "url", "texts": ["See:", None], "images": [None, "http://x.org/i.png"]},
      {"id": "misaligned", "texts": ["a"], "images": [None, "red.png"]},
      {"id": "both", "texts": ["a"], "images": ["red.png"]},
      {"id": "notext", "texts": [None], "images": ["red.png"]},
      {"id": "badb64", "texts": ["a", None], "images": [None, "data:image/png;base64,@@"]},
      {"id": "marker", "texts": ["a <image> b"], "images": [None]},
  ])
  summary, samples = run_build("interleaved", tmp_path / "docs.jsonl", tmp_path / "out",
                               image_dir=str(image_dir))
  assert samples == [
      schema.Interleaved(items=["Intro.", RED, "Middle.", GREEN, BLUE, "End."], id="d1"),
      schema.Interleaved(items=["Only text."], id="docs.jsonl:2"),
  ]
  assert summary["skipped"] == {"empty_text": 1, "image_marker_mismatch": 1,
                                "image_not_fetchable": 1, "malformed_record": 3}
  # With --drop_bad_images the URL document keeps its text; the image is counted.
  summary, samples = run_build("interleaved", tmp_path / "docs.jsonl", tmp_path / "out2",
                               build_options=build.BuildOptions(drop_bad_images=True),
                               image_dir=str(image_dir))
  assert samples[2] == schema.Interleaved(items=["See:"], id="url")
  assert summary["images_dropped"] == {"image_not_fetchable": 1}
  assert "image_not_fetchable" not in summary["skipped"]


def test_preference(tmp_path, image_dir):
  _jsonl(tmp_path / "pairs.jsonl", [
      {"id": "p1", "prompt": "Describe.", "image": "red.png", "chosen": "Red.",
       "rejected": "Blue."},
      {"id": "p2", "prompt": "<image>\n<image>\nCompare.", "images": ["red.png", "blue.png"],
       "chosen": "Different.", "rejected": "Same.", "system": "Judge."},
      {"id": "p3", "prompt": "Text only?", "chosen": "Yes.", "rejected": "No."},
      {"id": "same", "prompt": "Q", "chosen": "A", "rejected": "A"},
      {"id": "nochosen", "prompt": "Q", "rejected": "A"},
      {"id": "count", "prompt": "<image><image> Q", "image": "red.png", "chosen": "A",
       "rejected": "B"},
      {"id": "type", "prompt": 3, "chosen": "A", "rejected": "B"},
  ])
  summary, samples = run_build("preference", tmp_path / "pairs.jsonl", tmp_path / "out",
                               image_dir=str(image_dir))
  assert samples == [
      schema.Preference(prompt="<image>\nDescribe.", chosen="Red.", rejected="Blue.",
                        images=[RED], id="p1"),
      schema.Preference(prompt="<image>\n<image>\nCompare.", chosen="Different.",
                        rejected="Same.", images=[RED, BLUE], system="Judge.", id="p2"),
      schema.Preference(prompt="Text only?", chosen="Yes.", rejected="No.", id="p3"),
  ]
  assert summary["skipped"] == {"empty_text": 1, "identical_pair": 1,
                                "image_marker_mismatch": 1, "malformed_record": 1}


def test_crash_mid_build_leaves_no_shard(tmp_path):
  def reader(path, options):
    yield base.Draft("ok", "text", {"text": "fine"})
    raise RuntimeError("killed")

  with pytest.raises(RuntimeError, match="killed"):
    with records.ShardSetWriter(tmp_path / "out", "x", 2) as writer:
      build.build(reader, ["in"], writer, base.ReaderOptions(), build.BuildOptions())
      writer.commit()
  assert not list((tmp_path / "out").iterdir())


def _cli(*args):
  proc = subprocess.run([sys.executable, "tools/build_shards.py", "--noprogress", *args],
                        cwd=ROOT, capture_output=True, text=True, timeout=60)
  return proc.returncode, proc.stdout, proc.stderr


def test_cli(tmp_path, image_dir):
  (tmp_path / "data.json").write_text(json.dumps(LLAVA))
  args = ["--format=llava", f"--input={tmp_path}/*.json", f"--images={image_dir}",
          f"--output={tmp_path}/out", "--num_shards=2", "--name=sft"]
  code, out, err = _cli(*args)
  assert code == 0, err
  summary = json.loads(out.strip().splitlines()[-1])
  assert summary["samples_written"] == 3 and summary["skipped"] == LLAVA_SKIPS
  assert [s["samples"] for s in summary["shards"]] == [2, 1]
  assert json.loads((tmp_path / "out" / "sft.summary.json").read_text()) == summary
  assert len(records.open_shards(tmp_path / "out")) == 3
  # A second run does not replace the shards unless asked.
  code, out, err = _cli(*args)
  assert code == 2 and "--overwrite" in err


def test_cli_errors(tmp_path):
  code, _, err = _cli("--format=csv", "--input=x", f"--output={tmp_path}")
  assert code == 1 and "--format" in err
  code, _, err = _cli("--format=llava", f"--input={tmp_path}/nothing*.json",
                      f"--output={tmp_path}/out")
  assert code == 2 and "no input file matches" in err
  (tmp_path / "bad.json").write_text('[{"id": 1,')
  code, out, err = _cli("--format=llava", f"--input={tmp_path}/bad.json",
                        f"--output={tmp_path}/out")
  assert code == 3 and "could not be read to the end" in err
  assert json.loads(out.strip().splitlines()[-1])["input_errors"]
