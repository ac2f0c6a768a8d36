"""The demo's dataset choice: digits (default) or Fashion-MNIST from local files."""

import contextlib
import io
import json

import pytest

from morph_net.cli import main as cli_main
from morph_net.examples import demo
from morph_net.examples import fashion_mnist
from tests.examples import fashion_mnist_test

pytest.importorskip('sklearn')
pytest.importorskip('matplotlib')


def test_config_for_each_dataset(tmp_path):
  assert demo.config_for() == demo.DEFAULT_CONFIG
  assert demo.config_for('digits', quick=True) == demo.QUICK_CONFIG
  assert demo.config_for('fashion_mnist').dataset == 'fashion_mnist'
  quick = demo.config_for('fashion_mnist', quick=True, data_dir=str(tmp_path))
  assert quick.dataset == 'fashion_mnist' and quick.data_dir == str(tmp_path)
  assert quick.train_limit == demo.QUICK_CONFIG.train_limit
  with pytest.raises(ValueError, match=r"Received: dataset='cifar'"):
    demo.config_for('cifar')


def test_load_data_fashion_mnist_shapes(tmp_path):
  fashion_mnist_test._fake_dataset(tmp_path, n_train=20, n_test=8)
  config = demo.config_for('fashion_mnist', quick=True, data_dir=str(tmp_path))
  train, test, shape, description = demo.load_data(config)
  assert shape == (28, 28, 1) and 'Fashion-MNIST' in description
  assert train[0].shape == (20, 28, 28, 1) and test[0].shape == (8, 28, 28, 1)
  # The seed network accepts the images: 28x28x1 input.
  assert tuple(demo.seed_model(4, input_shape=shape).inputs[0].shape) == (None, 28, 28, 1)


def test_cli_names_the_install_command_when_files_are_missing(tmp_path):
  err = io.StringIO()
  with contextlib.redirect_stderr(err):
    status = cli_main.main(['demo', '--dataset', 'fashion_mnist', '--data-dir',
                            str(tmp_path / 'none'), '--output-dir', str(tmp_path / 'out')])
  assert status == 2
  assert 'apt-get install -y dataset-fashion-mnist' in err.getvalue()
  assert not (tmp_path / 'out').exists()


@pytest.mark.slow
@pytest.mark.skipif(not fashion_mnist.is_available(),
                    reason='dataset-fashion-mnist is not installed')
def test_quick_fashion_demo_runs(tmp_path):
  out = io.StringIO()
  with contextlib.redirect_stdout(out):
    status = cli_main.main(['demo', '--quick', '--dataset', 'fashion_mnist',
                            '--output-dir', str(tmp_path)])
  assert status == 0
  assert 'Fashion-MNIST (28x28 grayscale)' in out.getvalue()
  with open(tmp_path / 'demo_results.json') as f:
    result = json.load(f)
  # Quick config, width 8 at 28x28x1: FLOPs = 2*H*W*kh*kw*C_in*C_out per conv:
  # stem 2*784*9*1*8 = 112896; res_a, res_b 2*784*9*8*8 = 903168 each;
  # down (stride 2 -> 14x14) 2*196*9*8*16 = 451584; mix_1x1 2*196*16*8 = 50176;
  # mix_3x3 2*196*9*16*8 = 451584; head (-> 7x7) 2*49*9*16*16 = 225792;
  # logits 2*16*10 = 320.
  assert result['seed_flops'] == (112896 + 2 * 903168 + 451584 + 50176 + 451584 + 225792
                                  + 320)
  assert result['test_examples'] == 1000 and result['train_examples'] == 256
