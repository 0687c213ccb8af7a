"""Grain pipeline: resume in a fresh process, multi-process slicing, mixture, skips, TFDS."""
import collections
import json
import pathlib
import subprocess
import sys

import numpy as np
import pytest

import pipeline_helpers as helpers
from bliperax.data import batch_spec
from bliperax.data import example_shards
from bliperax.data import mixture
from bliperax.data import pipeline
from bliperax.data import pipeline_stats
from bliperax.data import records
from bliperax.data import render as render_lib
from bliperax.data import schema
from bliperax.data import tfds_source
from bliperax.data import tokenizer as tokenizer_lib
from bliperax.models import presets

HELPER = pathlib.Path(__file__).with_name("pipeline_helpers.py")


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
  root = tmp_path_factory.mktemp("shards")
  helpers.write_shards(root)
  return root


def _assert_same_batches(got, want):
  assert len(got) == len(want)
  for a, b in zip(got, want):
    assert a.keys() == b.keys()
    for k in a:
      np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def _resume_in_fresh_process(tmp_path, cfg, processes, skip, num):
  """Uninterrupted batches skip..skip+num vs. fresh processes restored after `skip`.

  Runs one uninterrupted iterator per process index of `processes` here, then
  restores every one of them in a single new interpreter.
  """
  jobs, wants = [], []
  for index in range(processes):
    source = pipeline.make_source(cfg, presets.tiny(), process_index=index,
                                  process_count=processes)
    helpers.take(source, skip)
    state = json.loads(json.dumps(source.get_state()))  # the trainer stores it as JSON
    wants.append((helpers.take(source, num), source.get_state()["counts"]))
    source.close()
    jobs.append(dict(config=cfg.to_dict(), process_index=index, process_count=processes,
                     state=state, out=str(tmp_path / f"out{index}.npz"), num=num))
  (tmp_path / "jobs.json").write_text(json.dumps(jobs))
  subprocess.run([sys.executable, str(HELPER), str(tmp_path / "jobs.json")], check=True,
                 cwd=HELPER.parent)
  for job, (want, want_counts) in zip(jobs, wants):
    _assert_same_batches(helpers.load_batches(job["out"]), want)
    assert json.loads(pathlib.Path(job["out"] + ".stats.json").read_text()) == want_counts
  return [want for want, _ in wants]


def test_resume_with_two_workers_in_a_fresh_process(shards, tmp_path):
  """mp_prefetch with 2 workers and best-fit packing (each worker's state lists its open
  rows): the restored iterator continues with the exact next batch. (Next-fit resumes in
  the tests below.)"""
  cfg = helpers.tiny_config(shards, worker_count=2, packing="best_fit", open_rows=3)
  (batches,) = _resume_in_fresh_process(tmp_path, cfg, 1, skip=3, num=2)
  assert batches[0]["tokens"].shape == (4, 160)
  assert batches[0]["crops"].shape == (4, 10, 56, 56, 3)
  assert batches[0]["crops"].dtype == np.uint8  # pixels; normalised on the device


def test_packing_config_is_checked():
  for bad, message in ((dict(packing="first_fit"), "data.packing"),
                       (dict(packing="best_fit", open_rows=0), "data.open_rows")):
    with pytest.raises(ValueError, match=message):
      pipeline.from_config(helpers.tiny_config("/nowhere", **bad))
  assert pipeline.from_config(helpers.tiny_config("/nowhere")).packer == "next_fit"
  # The configs' packing fields (so --config.data.packing works) are the pipeline's
  # defaults for configs without them.
  from bliperax.configs import mixtures  # pylint: disable=g-import-not-at-top
  from bliperax.data import packing  # pylint: disable=g-import-not-at-top
  assert mixtures.PACKING == {"packing": "next_fit", "open_rows": packing.DEFAULT_OPEN_ROWS}
  assert mixtures.grain_data(None).packing == "next_fit"


def test_resume_with_thread_prefetch_in_a_fresh_process(shards, tmp_path):
  """A prefetching thread runs ahead; the saved state is still that of the last batch
  handed out, so the restored iterator continues with the exact next batch."""
  cfg = helpers.tiny_config(shards, thread_prefetch=3)
  _resume_in_fresh_process(tmp_path, cfg, 1, skip=3, num=2)


def test_resume_two_processes_in_fresh_processes(shards, tmp_path):
  """process_count=2: each process's slice resumes exactly, and the slices differ."""
  cfg = helpers.tiny_config(shards, batch=4)
  first, second = _resume_in_fresh_process(tmp_path, cfg, 2, skip=3, num=2)
  assert first[0]["tokens"].shape == (2, 160)  # global batch 4 over 2 processes
  assert not np.array_equal(first[0]["tokens"], second[0]["tokens"])


class _SampleId:
  """Map: record bytes -> (source name, sample id)."""

  def __init__(self, name):
    self.name = name

  def __call__(self, record):
    try:
      return self.name, schema.decode(record).id
    except schema.RecordError:
      return self.name, None


def _ids(ds, n=None):
  n = len(ds) if n is None else n
  return [ds[i] for i in range(n)]


def test_processes_read_disjoint_slices_whose_union_is_the_dataset(shards):
  specs = [mixture.SourceSpec("chat", 1.0, (str(shards / "chat"),))]
  total = len(records.open_shards(str(shards / "chat")))
  for count in (1, 2, 3):
    epochs = collections.defaultdict(list)  # epoch -> each process's samples
    for index in range(count):
      ds = mixture.build(specs, lambda i, s: _SampleId(s.name), seed=7, shuffle=True,
                         process_index=index, process_count=count, num_epochs=2)
      ids = _ids(ds)
      epoch_len = len(ids) // 2
      epochs[0].append(ids[:epoch_len])
      epochs[1].append(ids[epoch_len:])
    for per_process in epochs.values():
      union = set().union(*per_process)
      assert sum(len(p) for p in per_process) == len(union) == total
    assert epochs[0] != epochs[1]  # a new permutation each epoch


def test_mixture_weights_are_honoured(shards):
  specs = [mixture.SourceSpec(k, w, (str(shards / k),))
           for k, w in (("caption", 7.0), ("chat", 5.0), ("text", 1.0))]
  ds = mixture.build(specs, lambda i, s: _SampleId(s.name), seed=0, shuffle=True,
                     process_index=0, process_count=1, num_epochs=None)
  n = 1300
  counts = collections.Counter(name for name, _ in _ids(ds, n))
  for spec in specs:
    p = spec.weight / 13.0
    # Three binomial standard deviations (the interleave is in fact exact).
    assert abs(counts[spec.name] - n * p) <= 3 * np.sqrt(n * p * (1 - p)), counts


def test_corrupt_samples_are_skipped_and_counted(shards):
  cfg = helpers.tiny_config(shards, batch=1, num_epochs=1, pack=False)
  cfg.data.sources = {"caption": dict(paths=str(shards / "caption"), weight=1.0)}
  source = pipeline.make_source(cfg, presets.tiny())
  rows = sum(1 for _ in source)
  stats = source.stats()
  total = len(records.open_shards(str(shards / "caption")))
  assert stats["samples_read"] == total == 24 + 4
  assert stats["skipped/corrupt_record"] == 2
  assert stats["skipped/bad_image"] == 2
  assert stats["samples_packed"] == rows == 24
  assert stats["rows_without_loss"] == 0
  assert 0 < stats["packing_efficiency"] < 1


def test_stats_count_truncation_caps_and_sources(shards):
  cfg = helpers.tiny_config(shards, seq_len=96)
  source = pipeline.make_source(cfg, presets.tiny())
  helpers.take(source, 6)
  stats = source.stats()
  assert stats["truncated_samples"] > 0 and stats["truncated_tokens"] > 0
  assert stats["capped_samples"] > 0  # documents of up to 6 images, cap 4
  assert stats["capped_images"] >= stats["capped_samples"]
  assert sum(stats[f"source/{k}"] for k in example_shards.KINDS) == stats["samples_packed"]
  assert stats["rows"] == 6 * 4


def test_image_cap_caps_documents_and_skips_chats():
  tok = tokenizer_lib.load()
  images = example_shards.generated_images(6)
  doc = schema.Interleaved(items=tuple(x for im in images for x in (im, "Text.")))
  rendered = render_lib.render(doc, tok, render_lib.RenderOptions(max_images=4))
  assert rendered.capped and len(rendered.images) == 4
  assert list(rendered.ids).count(32012) == 4
  chat = schema.Chat(turns=("<image>" * 5 + "Same?", "Yes."), images=tuple(images[:5]))
  with pytest.raises(render_lib.SkipSample, match=render_lib.TOO_MANY_IMAGES):
    render_lib.render(chat, tok, render_lib.RenderOptions(max_images=4))


def _prepare(to_sample=None, anyres=True):
  return pipeline.PrepareSample(0, anyres, presets.tiny(), batch_spec.Limits(200, 10, 10),
                                render_lib.RenderOptions(), to_sample=to_sample)


def test_tfds_field_mapping_with_a_fake_source():
  image = example_shards.generated_images(1)[0]
  fake = [  # what tfds.data_source gives: nested dicts, bytes text, encoded images
      {"image": image, "captions": {"text": [b"A red bus.", b"A bus."]}},
      {"image": np.zeros((8, 9, 3), np.uint8), "captions": {"text": [b"Black."]}},
      {"image": b"broken", "captions": {"text": [b"x"]}},
      {"image": image, "captions": {"text": []}},
  ]
  mapping = tfds_source.FieldMapping("caption", {"image": "image", "text": "captions/text/0"})
  prepare = _prepare(mapping, anyres=False)
  out = [prepare(x) for x in fake]
  assert isinstance(out[0], pipeline_stats.Prepared)
  assert isinstance(out[1], pipeline_stats.Prepared)  # decoded array re-encoded as PNG
  assert out[2].reason == pipeline_stats.BAD_IMAGE
  assert out[3].reason == pipeline_stats.CORRUPT_RECORD  # no caption at index 0
  tok = tokenizer_lib.load()
  labelled = out[0].example.labels[out[0].example.labels != -100]
  assert tok.decode(labelled) == "A red bus.<|endoftext|>"  # <|endofchunk|> has no loss
  qa = tfds_source.FieldMapping("chat", {"image": "img", "question": "q", "answer": "a"})
  chat = qa({"img": image, "q": b"What is it?", "a": b"A bus."})
  assert chat.turns == ("<image>\nWhat is it?", "A bus.") and len(chat.images) == 1
  with pytest.raises(ValueError, match="lacks"):
    tfds_source.FieldMapping("caption", {"image": "image"})


def test_tfds_array_record_dataset_end_to_end(tmp_path):
  tfds = pytest.importorskip("tensorflow_datasets")
  image = example_shards.generated_images(1)[0]

  class TinyCaptions(tfds.core.GeneratorBasedBuilder):
    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
      return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
          "image": tfds.features.Image(encoding_format="png"),
          "captions": tfds.features.Sequence({"text": tfds.features.Text()})}))

    def _split_generators(self, dl_manager):
      return {"train": self._generate_examples()}

    def _generate_examples(self):
      import io  # pylint: disable=g-import-not-at-top
      for i in range(6):
        yield i, {"image": io.BytesIO(image), "captions": {"text": [f"Caption {i}."]}}

  TinyCaptions(data_dir=str(tmp_path), file_format="array_record").download_and_prepare()
  spec = tfds_source.TfdsSpec(name="tiny_captions", split="train", data_dir=str(tmp_path),
                              kind="caption", fields={"image": "image",
                                                      "text": "captions/text/0"})
  source = tfds_source.open_source(spec)
  assert len(source) == 6 and isinstance(source[0]["image"], bytes)  # kept encoded
  cfg = helpers.tiny_config(tmp_path, batch=2, num_epochs=1, pack=False)
  cfg.data.sources = {"coco_like": dict(tfds=spec.__dict__, weight=1.0)}
  grain_source = pipeline.make_source(cfg, presets.tiny())
  assert sum(1 for _ in grain_source) == 3
  assert grain_source.stats()["samples_packed"] == 6


def test_trainer_builds_the_grain_source(shards):
  from bliperax.train import trainer  # pylint: disable=g-import-not-at-top
  cfg = helpers.tiny_config(shards)
  source = trainer.make_source(cfg, presets.tiny())
  batch = next(source)
  assert set(batch) == set(pipeline.OUTPUT_KEYS)
  source.close()
