"""`morphnet --version`."""

import pytest

import morph_net
from morph_net.cli import main


def test_version_flag_prints_the_package_version(capsys):
  with pytest.raises(SystemExit) as info:
    main.main(['--version'])
  assert info.value.code == 0
  assert capsys.readouterr().out.strip() == f'morphnet {morph_net.__version__}'
