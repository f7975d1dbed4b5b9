"""Timing, machine description and markdown helpers for the benchmarks.

Every timed callable runs one complete computation and returns only when its
result is ready: JAX callables block on their outputs, and PyTorch runs
synchronously on the CPU. Times are medians in seconds.
"""

from collections.abc import Callable
from collections.abc import Mapping
from collections.abc import Sequence
import datetime
import importlib.metadata
import os
import platform
import shutil
import statistics
import subprocess
import time

# Lines that enclose the generated results in the output file.
START_MARKER = '<!-- benchmarks.run results: start -->'
END_MARKER = '<!-- benchmarks.run results: end -->'

# Distributions whose versions the report lists, in this order.
VERSIONED_PACKAGES = (
  'jax',
  'jaxlib',
  'flax',
  'optax',
  'numpy',
  'tensorflow-cpu',
  'tensorflow-datasets',
  'dm-pix',
  'torch',
  'pytorch-msssim',
  'piq',
  'kornia',
)


def median_times(
  functions: Mapping[str, Callable[[], object]],
  *,
  warmup: int,
  repeats: int,
) -> dict[str, float]:
  """Times each callable and returns its median time in seconds.

  Every callable runs once untimed (compilation), then `warmup` more times
  untimed. The timed calls are interleaved: each of the `repeats` rounds
  calls every function once, so that a change in the machine's load during
  the measurement affects all of them alike.

  Args:
    functions: name -> callable that runs one computation to completion.
    warmup: untimed calls per function after the first one.
    repeats: timed calls per function, at least 1.

  Returns:
    name -> median seconds per call.
  """
  for function in functions.values():
    for _ in range(1 + warmup):
      function()

  samples = {name: [] for name in functions}
  for _ in range(max(repeats, 1)):
    for name, function in functions.items():
      start = time.perf_counter()
      function()
      samples[name].append(time.perf_counter() - start)
  return {name: statistics.median(values) for name, values in samples.items()}


def machine_description() -> str:
  """Returns the CPU model, core and thread counts and memory, from lscpu.

  Falls back to `platform.processor()` and `os.cpu_count()` where lscpu is
  missing.
  """
  fields = {}
  if shutil.which('lscpu'):
    output = subprocess.run(
      ['lscpu'], capture_output=True, text=True, check=False
    ).stdout
    for line in output.splitlines():
      key, _, value = line.partition(':')
      fields[key.strip()] = value.strip()

  model = fields.get('Model name') or platform.processor() or 'unknown CPU'
  cpus = fields.get('CPU(s)') or str(os.cpu_count())
  threads = fields.get('Thread(s) per core', '?')
  memory = _memory_gib()
  return (
    f'{model}, {cpus} CPUs ({threads} threads per core), '
    f'{memory} GiB memory, {platform.system()} {platform.machine()}'
  )


def _memory_gib() -> str:
  try:
    pages = os.sysconf('SC_PHYS_PAGES')
    page_size = os.sysconf('SC_PAGE_SIZE')
  except (ValueError, OSError):
    return '?'
  return f'{pages * page_size / 2**30:.0f}'


def package_versions() -> list[str]:
  """Returns 'name version' for each of VERSIONED_PACKAGES, or 'absent'."""
  versions = []
  for name in VERSIONED_PACKAGES:
    try:
      versions.append(f'{name} {importlib.metadata.version(name)}')
    except importlib.metadata.PackageNotFoundError:
      versions.append(f'{name} absent')
  return versions


def today() -> str:
  """Returns the local date and time, as `date` prints it."""
  return datetime.datetime.now().astimezone().strftime('%a %d %b %Y %H:%M %Z')


def markdown_table(header: Sequence[str], rows: Sequence[Sequence]) -> str:
  """Formats rows as a markdown table; cells are converted with str()."""
  lines = [
    '| ' + ' | '.join(header) + ' |',
    '| ' + ' | '.join('---' for _ in header) + ' |',
  ]
  for row in rows:
    lines.append('| ' + ' | '.join(str(cell) for cell in row) + ' |')
  return '\n'.join(lines)


def milliseconds(seconds: float) -> str:
  """Formats seconds as milliseconds with three significant digits."""
  return f'{seconds * 1e3:.3g}'


def write_results(path: str, lines: Sequence[str]) -> None:
  """Writes `lines` between START_MARKER and END_MARKER in `path`.

  The text before and after the markers is kept, so prose around the
  results survives a rerun. A file without both markers is replaced by a
  title and the results.
  """
  block = '\n'.join([START_MARKER, *lines, END_MARKER]) + '\n'
  text = ''
  if os.path.exists(path):
    with open(path) as f:
      text = f.read()
  if START_MARKER in text and END_MARKER in text:
    before = text[: text.index(START_MARKER)]
    after = text[text.index(END_MARKER) + len(END_MARKER) :].lstrip('\n')
    text = before + block + ('\n' + after if after else '')
  else:
    text = '# Benchmarks\n\n' + block
  directory = os.path.dirname(path)
  if directory:
    os.makedirs(directory, exist_ok=True)
  with open(path, 'w') as f:
    f.write(text)
