"""Records a benchmark's figures as a row of a table in benchmarks/README.md.

Each benchmark owns one section (`## <title>`) holding a markdown table; a run
appends its row (newest last) and keeps the last `keep` rows. The file is
replaced atomically.
"""

from __future__ import annotations

import datetime
import os
import platform
from typing import Sequence

from morph_net.tools import structure_exporter

README = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'README.md')


def machine() -> str:
  return f'{os.cpu_count()} CPU, {platform.machine()}'


def record(title: str, columns: Sequence[str], row: Sequence[object],
           keep: int = 5, path: str = README) -> None:
  """Appends `row` to the table of section `## title` (created if missing)."""
  cells = [datetime.date.today().isoformat(), machine()] + [str(c) for c in row]
  header = ['date', 'machine'] + list(columns)
  line = '| ' + ' | '.join(cells) + ' |'
  text = open(path).read() if os.path.exists(path) else '# Benchmarks\n'
  marker = f'## {title}\n'
  if marker not in text:
    text = text.rstrip('\n') + '\n\n' + marker + '\n' + (
        '| ' + ' | '.join(header) + ' |\n' + '|' + '---|' * len(header) + '\n')
  before, after = text.split(marker, 1)
  lines = after.split('\n')
  table_start = next(i for i, l in enumerate(lines) if l.startswith('|'))
  table_end = table_start
  while table_end < len(lines) and lines[table_end].startswith('|'):
    table_end += 1
  header_lines = lines[table_start:table_start + 2]
  rows = lines[table_start + 2:table_end] + [line]
  rows = rows[-keep:]
  lines = lines[:table_start] + header_lines + rows + lines[table_end:]
  structure_exporter.write_file_atomically(path, before + marker + '\n'.join(lines))
