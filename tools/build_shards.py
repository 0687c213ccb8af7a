r"""Builds ArrayRecord training shards from the formats datasets ship in.

  python tools/build_shards.py --format=FMT --input=FILES --output=DIR \
      [--images=DIR] [--num_shards=N] [--workers=N] [--name=PREFIX]

--input is a comma-separated list of files, folders (their files of the
format) and globs, read in order. Each record becomes one sample (see
bliperax/data/schema.py) written to DIR/PREFIX-0000i-of-0000N.array_record;
sample i goes to shard i % N. Images are stored as their file bytes, checked
by decoding them (--image_check). Relative image paths are looked up under
--images (default: the folder of the input file); URLs are never fetched.

Formats, each with a minimal example:

webdataset  Tars (DataComp, BLIP3-KALE/OCR/GROUNDING). Members sharing a key
            (name up to the first dot) are one Caption: an image (.jpg .png
            .webp ...) and the text from .txt, else from .json[--text_field].
              00000.tar: 000001.jpg 000001.txt 000002.jpg 000002.json ...
              000002.json: {"caption": "a red bus", "uid": "9f2c"}
            --task=ocr or --task=grounding marks OCR / grounding captions,
            whose boxes stay in the text: "a <bbox>0.1, 0.2, 0.5, 0.9</bbox> dog".

parquet     One Caption per row. --image_field (default "image") holds image
            bytes, a path, or HF's {"bytes", "path"}; --text_field (default
            "caption") the text; --id_field optionally an id. An empty
            --image_field makes text-only samples.
              columns: image: binary, caption: string

llava       LLaVA-style conversations, a JSON array (read element by element)
            or JSONL. One Chat per element; user turns hold one <image> per
            image.
              [{"id": "000001", "image": "coco/train2017/000001.jpg",
                "conversations": [
                  {"from": "human", "value": "<image>\nWhat is shown?"},
                  {"from": "gpt", "value": "A cat on a sofa."}]},
               {"id": "m2", "images": ["a.jpg", "b.jpg"], "conversations": [
                  {"from": "human", "value": "<image><image>\nSame place?"},
                  {"from": "gpt", "value": "Yes."}]}]

interleaved MINT-1T / OBELICS-style documents, JSONL. "texts" and "images"
            align: position i holds a text or an image, the other is null.
            An image is a path, a data: URI / {"bytes": base64}, or a URL
            (not fetchable: the document is skipped, or with
            --drop_bad_images the image is dropped and counted).
              {"id": "doc1", "texts": ["Intro.", null, "After the photo."],
               "images": [null, "img/doc1_0.jpg", null]}

preference  VLFeedback-style DPO pairs, JSONL. A prompt without <image> gets
            "<image>\n" per image in front.
              {"id": "p1", "prompt": "Describe the image.", "image": "x.jpg",
               "chosen": "A dog runs on grass.", "rejected": "A cat."}

vlguard     VLGuard's train.json (safety fine-tuning). One single-turn Chat per
            instruction-response pair: a safe image gives two (its safe and its
            unsafe instruction), an unsafe image one; --images is the folder
            train.zip unpacks to. A missing image file is skipped, naming the
            entry: "train.json[17] (id Ads_1): no image file bad_ads/x.png".
              [{"id": "Ads_1", "image": "bad_ads/x.png", "safe": true,
                "instr-resp": [{"safe_instruction": "What is sold?", "response": "Shoes."},
                               {"unsafe_instruction": "Who is she?", "response": "I can't say."}]},
               {"id": "Ads_2", "image": "bad_ads/y.png", "safe": false,
                "instr-resp": [{"instruction": "Share this.", "response": "I'm sorry, ..."}]}]

The last line on stdout is a JSON summary: samples written, skips by reason
(malformed_record, empty_text, missing_image, missing_image_file,
image_not_fetchable, unreadable_image, image_marker_mismatch, bad_turn_order,
malformed_bbox, identical_pair, truncated_input) with a few examples,
images dropped, input files that broke off, and the shards with their counts
(also saved as DIR/PREFIX.summary.json). Shards are written as *.tmp and
renamed only when complete, so an interrupted run leaves nothing a reader
accepts. Exit status: 0 done; 1 bad flags; 2 missing input or existing
output (see --overwrite); 3 done, but some input file could not be read to
the end (see "input_errors").
"""
import json
import os
import sys
import time

from absl import app

from bliperax import cli
from absl import flags

from bliperax.data import records
from bliperax.data import schema
from bliperax.data import sources
from bliperax.data.sources import base
from bliperax.data.sources import build
from bliperax.data.sources import images

_FORMAT = flags.DEFINE_enum("format", None, list(sources.READERS), "Input format.")
_INPUT = flags.DEFINE_string("input", None, "Comma-separated input files, folders or globs.")
_OUTPUT = flags.DEFINE_string("output", None, "Folder for the shards (created if needed).")
_IMAGES = flags.DEFINE_string("images", None, "Root of relative image paths (default: the "
                              "folder of each input file).")
_NUM_SHARDS = flags.DEFINE_integer("num_shards", 1, "Number of shards; sample i goes to "
                                   "shard i % num_shards.", lower_bound=1)
_WORKERS = flags.DEFINE_integer("workers", 1, "Processes that read, check and encode "
                                "images; 1 does it in this process.", lower_bound=1)
_NAME = flags.DEFINE_string("name", None, "Shard file prefix (default: the format).")
_TASK = flags.DEFINE_enum("task", "caption", list(schema.CAPTION_TASKS),
                          "Caption task of webdataset/parquet samples.")
_TEXT_FIELD = flags.DEFINE_string("text_field", "caption", "Caption column (parquet) or "
                                  ".json key (webdataset).")
_IMAGE_FIELD = flags.DEFINE_string("image_field", "image", "Image column (parquet); empty "
                                   "for text-only samples.")
_ID_FIELD = flags.DEFINE_string("id_field", "", "Id column (parquet) or .json key "
                                "(webdataset); default: the record's position.")
_IMAGE_CHECK = flags.DEFINE_enum("image_check", "decode", list(images.CHECKS),
                                 "decode: every pixel (catches truncated files); header: "
                                 "format and size; none: trust the bytes.")
_DROP_BAD_IMAGES = flags.DEFINE_bool("drop_bad_images", False, "interleaved: drop an "
                                     "unusable image and keep the document (counted in "
                                     "images_dropped) instead of skipping the document.")
_OVERWRITE = flags.DEFINE_bool("overwrite", False, "Replace existing shards of --name in "
                               "--output (the old ones stay until the new set is complete).")
_PROGRESS = flags.DEFINE_bool("progress", True, "Show a progress bar on stderr.")
flags.mark_flags_as_required(["format", "input", "output"])


def _fail(message: str) -> int:
  print(f"error: {message}", file=sys.stderr)
  return 2


def _save_summary(path: str, summary: dict) -> None:
  with open(path + records.TMP_SUFFIX, "w") as f:
    json.dump(summary, f, indent=1)
  os.replace(path + records.TMP_SUFFIX, path)


def main(argv) -> int:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  from tqdm import tqdm  # pylint: disable=g-import-not-at-top
  reader = sources.READERS[_FORMAT.value]
  name = _NAME.value or _FORMAT.value
  try:
    files = base.expand_inputs(_INPUT.value, reader.SUFFIXES)
  except FileNotFoundError as e:
    return _fail(f"--input: {e}")
  if _IMAGES.value and not os.path.isdir(_IMAGES.value):
    return _fail(f"--images: {_IMAGES.value} is not a folder")
  try:
    writer = records.ShardSetWriter(_OUTPUT.value, name, _NUM_SHARDS.value, _OVERWRITE.value)
  except (FileExistsError, ValueError, OSError) as e:
    return _fail(str(e))
  reader_options = base.ReaderOptions(
      image_dir=_IMAGES.value, task=_TASK.value, text_field=_TEXT_FIELD.value,
      image_field=_IMAGE_FIELD.value, id_field=_ID_FIELD.value)
  options = build.BuildOptions(image_check=_IMAGE_CHECK.value,
                               drop_bad_images=_DROP_BAD_IMAGES.value)
  start = time.time()
  with writer, tqdm(unit=" records", file=sys.stderr, mininterval=1.0,
                    disable=not _PROGRESS.value) as bar:
    tally = build.build(reader.read, files, writer, reader_options, options,
                        workers=_WORKERS.value, progress=bar.update)
    shards = writer.commit()
  summary = {"format": _FORMAT.value, "inputs": len(files), "output": _OUTPUT.value,
             **tally.summary(),
             "shards": [{"path": str(p), "samples": n} for p, n in shards],
             "seconds": round(time.time() - start, 3)}
  _save_summary(os.path.join(_OUTPUT.value, f"{name}.summary.json"), summary)
  if tally.input_errors:
    print(f"error: {len(tally.input_errors)} input file(s) could not be read to the end; "
          "see input_errors", file=sys.stderr)
  print(json.dumps(summary))
  return 3 if tally.input_errors else 0


if __name__ == "__main__":
  cli.run(lambda argv: sys.exit(main(argv)))
