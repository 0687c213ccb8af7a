"""A Python stand-in for the PTB tokenization pycocoevalcap runs in Java.

pycocoevalcap tokenizes every reference and candidate caption with Stanford
CoreNLP 3.4.1's PTBTokenizer (`java ... PTBTokenizer -preserveLines -lowerCase`,
all captions of a call in one file, one a line) and then drops the tokens in its
PUNCTUATIONS list. Where `java` is missing, captions go through `tokenize` below
instead, which gives the same tokens on ordinary captions (compared with the Java
tokenizer in tests/test_benchmarks_captions.py):

- words are lower-cased; `.`, `,`, `;`, `:`, `?`, `!`, `-`, `--`, `...` and quotes
  are split off and then dropped, except a period that belongs to a word: numbers
  (`3.5`), acronyms (`u.s.`, `a.m.`), the abbreviations PTB knows (`mr.`, `st.`,
  `etc.`, `jan.`, `ph.d.`, ...; `no.`, `fig.`, `ca.` only before a number), and a
  single letter (`plan b.`) unless a sentence starts after it (`Vitamin C. It`,
  also when `It` begins the next caption: PTB reads past the end of the line);
- clitics are split as PTB does: `man's` -> `man 's`, `isn't` -> `is n't`,
  `can't` -> `ca n't`, `they're` -> `they 're`, `I'd've` -> `i 'd 've`,
  `cannot` -> `can not`, `gonna` -> `gon na`, `'tis` -> `'t is`;
- brackets become `-lrb-`, `-rrb-`, `-lsb-`, `-rsb-`, `-lcb-`, `-rcb-` and stay:
  pycocoevalcap's list names them in upper case, and PTB has lower-cased them;
- `$`, `#` before a number and `%` are tokens of their own; `!!!` and `??` (runs)
  are kept, as PTB emits them as one token that is not in the list;
- hyphenated words, `1,000`, `10:30`, `and/or`, URLs and e-mail addresses stay one
  token; curly quotes, dashes and the ellipsis count as their ASCII forms.

Known differences, all rare in captions: emoticons (`:)` is `:-rrb-` in PTB), a
time glued to a word (`5:30pm`), signed numbers (`2+2`), `US$5`, a quote before a
number and a sign (`'50%`), a leading hyphen before a number (`-7-Eleven`), and
abbreviations outside the lists below.
"""
from __future__ import annotations

import re
from typing import List, Sequence

# pycocoevalcap's PUNCTUATIONS: tokens removed after tokenizing.
REMOVED = frozenset(["''", "'", "``", "`", "-LRB-", "-RRB-", "-LCB-", "-RCB-",
                     ".", "?", "!", ",", ":", "-", "--", "...", ";"])

_BRACKETS = {"(": "-lrb-", ")": "-rrb-", "[": "-lsb-", "]": "-rsb-", "{": "-lcb-",
             "}": "-rcb-"}
_UNICODE = {"\u201c": '"', "\u201d": '"', "\u201e": '"', "\u00ab": '"', "\u00bb": '"',
            "\u2018": "'", "\u2019": "'", "\u201a": "'", "\u2032": "'",
            "\u2012": " -- ", "\u2013": " -- ", "\u2014": " -- ", "\u2015": " -- ",
            "\u2026": " ... ", "\u00a0": " "}

# Abbreviations whose period PTB keeps (lower case; from its lexer's lists).
_ABBREVIATIONS = frozenset("""
    jan feb mar apr jun jul aug sep sept oct nov dec mon tue tues wed thu thurs fri
    ala ariz calif colo conn ct dak fla ga ind kan kans ky md mich minn mo mont neb nev
    okla penn tenn va vt wis wisc wyo
    mr mrs ms dr drs prof profs sen sens rep reps atty attys lt col gen messrs gov govs
    adm rev maj sgt cpl pvt mt capt st ste ave pres lieut hon brig cmdr comdr pfc spc
    supt supts det mme mmes mlle mlles jr sr bros blvd rd esq
    inc co cos corp pty ptys ltd plc bancorp dept bhd assn univ intl sys invt elec natl
    mfg mtg etc al seq vs alex wm jos cie cf treas ft est sq bldg ph.d ed.d
    """.split())
# Kept only with a capital first letter (`Mass.`, but `mass.` ends a sentence).
_CAPITAL_ABBREVIATIONS = frozenset("Az Ark Del Ill La Mass Miss Ore Pa Tex Wash".split())
# Kept only before a number (`no. 2`, `fig. 3`, `ca. 1900`).
_NUMBER_ABBREVIATIONS = frozenset("no nos art fig figs ca pp op tel ext".split())
# Capitalised words after which PTB takes `X.` (one letter) for the end of a sentence.
_SENTENCE_STARTS = frozenset("""
    A About After An As At But He Her Here However If In It Last Many More Now Once One
    Other Our She Since So Some Such That The Their Then There These They This We What
    When While Yet You""".split())
_ACRONYM = re.compile(r"^[A-Za-z](\.[A-Za-z])+$")  # u.s, a.m, e.g (before the final '.')
_PROTECTED = re.compile(  # URLs and e-mail addresses are one token (a prefix of a chunk)
    r"https?://[^\s\"<>|()]*[^\s\"<>|.!?(){},\-]|www\.[^\s\"<>|()]*[^\s\"<>|.!?(){},\-]"
    r"|[A-Za-z0-9][^\s\"<>|()]*@([^\s\"<>|().]+\.)+[A-Za-z]{2,}"
    r"|([^\s\"'`<>|.!?(){},\-_$]+\.)+(com|net|org|edu)(/[^\s\"<>|()]*[^\s\"<>|.!?(){},\-])?")
_WHOLE_WORDS = {"cannot": ("can", "not"), "gonna": ("gon", "na"), "gotta": ("got", "ta"),
                "wanna": ("wan", "na"), "gimme": ("gim", "me"), "lemme": ("lem", "me"),
                "'tis": ("'t", "is"), "'twas": ("'t", "was")}
_CLITIC = re.compile(r"^(.+?)('s|'re|'ve|'ll|'d|'m|n't)$", re.IGNORECASE)


def _split_punctuation(text: str) -> List[str]:
  """The chunks of a caption, with the punctuation PTB always splits off spaced out.

  Quotes become the token ``, as in PTB (both its opening and closing forms are
  dropped later); brackets become -lrb- etc.
  """
  for a, b in _UNICODE.items():
    text = text.replace(a, b)
  out = []
  for chunk in text.split():
    url = _PROTECTED.match(chunk)
    if url:
      out.append(url.group(0))
      chunk = chunk[url.end():]
    for a, b in _BRACKETS.items():
      chunk = chunk.replace(a, f" {b} ")
    chunk = re.sub(r'"|`+', " `` ", chunk)
    chunk = re.sub(r"\.\.\.+(?=\w)|--|;|%|=|<|>|[!?]+", lambda m: f" {m.group(0)} ", chunk)
    chunk = re.sub(r"(?<!\d),|,(?!\d)", " , ", chunk)  # 1,000 stays
    chunk = re.sub(r"(?<!\d):|:(?!\d)", " : ", chunk)  # 10:30 stays
    chunk = re.sub(r"(?<![A-Za-z])\$|(?<![A-Za-z0-9])#(?=\d)", r" \g<0> ", chunk)  # $5, #1
    chunk = re.sub(r"(?<=[a-z])&(?=[a-z])", " & ", chunk)  # m&m (AT&T stays)
    out.extend(chunk.split())
  return out


def _keeps_period(word: str, next_chunk: str) -> bool:
  """Whether `word.` is one token (an abbreviation) rather than `word` + `.`."""
  if len(word) == 1 and word.isalpha():  # an initial, unless a sentence starts next
    return re.sub(r"[^A-Za-z].*", "", next_chunk) not in _SENTENCE_STARTS
  if _ACRONYM.match(word) or word.lower() in _ABBREVIATIONS or word in _CAPITAL_ABBREVIATIONS:
    return True
  return word.lower() in _NUMBER_ABBREVIATIONS and next_chunk[:1].isdigit()


def _word_tokens(chunk: str, next_chunk: str) -> List[str]:
  """One chunk (punctuation already spaced out) -> its tokens."""
  if (chunk in REMOVED or chunk in _BRACKETS.values() or _PROTECTED.fullmatch(chunk)
      or re.fullmatch(r"[!?]+", chunk)):
    return [chunk]
  head, tail = [], []
  while len(chunk) > 1:  # peel quotes, hyphens and periods off both ends
    if (chunk.startswith("'") and chunk.lower() not in _WHOLE_WORDS
        and not re.match(r"'(em\b|n'|\d\ds?$|s$)", chunk, re.IGNORECASE)):
      head.append("'")
      chunk = chunk[1:]
    elif chunk.startswith("-") and not chunk[1].isdigit():
      head.append("-")
      chunk = chunk[1:]
    elif chunk.endswith("'") and not re.search(r"(^y|'n)'$", chunk, re.IGNORECASE):
      tail.insert(0, "'")
      chunk = chunk[:-1]
    elif chunk.endswith("-"):
      tail.insert(0, "-")
      chunk = chunk[:-1]
    elif chunk.endswith("."):  # `word.`, `word...`, `U.S.` or `U.S....`
      stem = chunk.rstrip(".")
      if not stem:
        break
      periods = len(chunk) - len(stem)
      if _keeps_period(stem, "." if tail else next_chunk):
        if periods == 1:
          break
        chunk = stem + "."
      else:
        chunk = stem
      tail.insert(0, "." if periods == 1 else "...")
    else:
      break
  lower = chunk.lower()
  if lower in _WHOLE_WORDS:
    words = list(_WHOLE_WORDS[lower])
  elif lower == "y'all":
    words = [chunk[:2], chunk[2:]]
  elif re.fullmatch(r"\w+'n'\w+", chunk):
    words = list(re.fullmatch(r"(\w+)('n')(\w+)", chunk).groups())
  else:
    clitics = []
    while True:  # I'd've -> I 'd 've
      m = _CLITIC.match(chunk)
      if not m or m.group(1).endswith("'"):
        break
      chunk = m.group(1)
      clitics.insert(0, m.group(2))
    words = [chunk] + clitics
  return head + words + tail


def _tokens(chunks: List[str], next_line: List[str]) -> List[str]:
  tokens = []
  for i, chunk in enumerate(chunks):
    following = chunks[i + 1] if i + 1 < len(chunks) else (next_line[0] if next_line else "")
    tokens.extend(_word_tokens(chunk, following))
  return [t.lower() for t in tokens if t not in REMOVED]


def tokenize(captions: Sequence[str]) -> List[str]:
  """Captions -> their space-joined tokens, as pycocoevalcap's PTB step returns them.

  Captions are tokenized as one file, one caption a line, as pycocoevalcap does:
  PTB looks past the end of a line, so a caption ending in an initial (`plan B.`)
  keeps its period unless the next caption starts a sentence (`The ...`).
  """
  lines = [_split_punctuation(c.replace("\n", " ")) for c in captions]
  return [" ".join(_tokens(line, lines[i + 1] if i + 1 < len(lines) else []))
          for i, line in enumerate(lines)]


def tokenize_line(caption: str) -> str:
  """One caption on its own."""
  return tokenize([caption])[0]
