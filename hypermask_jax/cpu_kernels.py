"""The C++ kernels XLA:CPU calls (cpu_kernels.cc): built on first use, registered with XLA.

cpu_kernels.cc holds the XLA FFI custom calls that replace XLA:CPU's own
code where it is slow: FactoredAdam and DenseAdam (factored_adam.py),
ChunkDense and ChunkDenseBackward (hypernet.chunk_dense_pieces and
hypernet.chunk_dense), Conv3x3 and Conv3x3KernelGrad (layers.kernel_conv3x3),
and WideRows (wide_dense.wide_rows_ffi). They are compiled on first use
with the C++ compiler ($CXX, else g++) against the XLA FFI headers that ship
with jaxlib, for this machine's CPU (-march=native), into one library in
~/.cache/hypermask_jax/kernels (one file per source, jaxlib, compiler and
CPU; 8-20 s of one core, once: processes that need it at the same time
wait for the first to build it, and both log what they do). Where that fails
(no compiler, say), `unavailable_reason` says why, and backend.py chooses
XLA's own code with a warning. They take float32 operands; the layers that
call them use XLA's code for other types (experiments/parity_torch.py runs in
float64).

`python -m hypermask_jax.cpu_kernels` builds them now, as an install step
would, and prints where they are (or why they cannot be built): a first run,
or a benchmark's first timed task (experiments/benchmark_vs_torch.py), then
does not wait for them.
"""

import ctypes
import fcntl
import functools
import hashlib
import math
import os
import pathlib
import platform
import re
import subprocess
import sys
import tempfile
import time

from absl import logging
import jax

SOURCE = pathlib.Path(__file__).with_name('cpu_kernels.cc')
# XLA's names for the kernels, which compiled programs call them by: named after the source,
# so that a program compiled against other kernels (in the persistent compilation cache, say)
# never calls these, and two checkouts' kernels can be loaded in one process
# (experiments/compare_checkouts.py).
_SOURCE_TEXT = SOURCE.read_text()  # what is built, whatever the file holds by then
_VERSION = hashlib.sha256(_SOURCE_TEXT.encode()).hexdigest()[:12]
TARGETS = {'FactoredAdam': f'hypermask_factored_adam_{_VERSION}',
           'DenseAdam': f'hypermask_dense_adam_{_VERSION}',
           'ChunkDense': f'hypermask_chunk_dense_{_VERSION}',
           'ChunkDenseBackward': f'hypermask_chunk_dense_backward_{_VERSION}',
           'Conv3x3': f'hypermask_conv3x3_{_VERSION}',
           'Conv3x3KernelGrad': f'hypermask_conv3x3_kernel_grad_{_VERSION}',
           'WideRows': f'hypermask_wide_rows_{_VERSION}'}
CACHE = '~/.cache/hypermask_jax/kernels'
FLAGS = ('-O3', '-march=native', '-ffp-contract=off', '-fno-math-errno', '-std=c++17',
         '-shared', '-fPIC')


def _cpu_id():
  """The CPU's model and features, for the compiled library's key (-march=native)."""
  try:
    with open('/proc/cpuinfo') as f:
      lines = [line for line in f if line.startswith(('model name', 'flags', 'Features'))]
    return ''.join(sorted(set(lines)))
  except OSError:
    return platform.processor()


def _path():
  """Where the library for this source, jaxlib, compiler, flags and CPU is kept."""
  key = hashlib.sha256(b'\0'.join([
      _SOURCE_TEXT.encode(), jax.lib.__version__.encode(), _compiler().encode(),
      ' '.join(FLAGS).encode(),
      platform.machine().encode(), _cpu_id().encode()])).hexdigest()[:16]
  return pathlib.Path(os.path.expanduser(CACHE)) / f'cpu_kernels-{key}.so'


def _compiler():
  return os.environ.get('CXX', 'g++')


def _built():
  """The library's path, built first if it is not there yet.

  Processes that start together on one host (a test run's workers, a sweep's processes)
  build it once: the others wait for the first, then find it built. Both say so in the log.
  """
  path = _path()
  if path.exists():
    return path
  path.parent.mkdir(parents=True, exist_ok=True)
  with open(path.with_suffix('.lock'), 'w') as lock:
    try:
      fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      logging.info('waiting for another process to build the C++ kernels into %s', path)
      fcntl.flock(lock, fcntl.LOCK_EX)
    if not path.exists():
      logging.info('building the C++ kernels for this CPU into %s (once per machine and '
                   'version: 8-20 s)', path)
      tic = time.perf_counter()
      _build(_compiler(), path)
      logging.info('built the C++ kernels in %.1f s', time.perf_counter() - tic)
  return path


@functools.cache
def library():
  """The compiled kernels, registered with XLA under TARGETS' names; builds them if needed.
  Raises OSError or subprocess.CalledProcessError where they cannot be built or loaded."""
  loaded = ctypes.cdll.LoadLibrary(str(_built()))
  for symbol, target in TARGETS.items():
    jax.ffi.register_ffi_target(target, jax.ffi.pycapsule(getattr(loaded, symbol)),
                                platform='cpu')
  return loaded


def _build(compiler, path):
  """Compiles the library into `path`, which appears whole or not at all."""
  fd, tmp = tempfile.mkstemp(dir=path.parent, suffix='.so.tmp')
  os.close(fd)
  try:
    subprocess.run([compiler, *FLAGS, '-isystem', jax.ffi.include_dir(), '-x', 'c++', '-',
                    '-o', tmp], input=_SOURCE_TEXT, check=True, capture_output=True, text=True,
                   timeout=300)
    os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)


@functools.cache
def unavailable_reason():
  """Why the kernels cannot run here ('' where they can): not on CPU, or they did not build."""
  if jax.default_backend() != 'cpu':
    return f'they run only on CPU (the backend is {jax.default_backend()})'
  return _build_failure()


def _build_failure():
  """Why the library cannot be built or loaded ('' where it can)."""
  try:
    library()
  except subprocess.CalledProcessError as e:
    lines = (e.stderr or '').strip().splitlines()
    return f'compiling them failed ({lines[-1] if lines else e})'
  except (OSError, subprocess.SubprocessError) as e:
    return f'compiling them failed ({type(e).__name__}: {e})'
  return ''


def flops(hlo):
  """The floating-point operations of the calls to the kernels that take array operands (the
  chunk layer and its backward pass, dense Adam, the 3x3 convolutions, the wide layer's product)
  in a compiled program's text, which XLA's cost analysis leaves out, from the shapes of their
  results and operands: 2 rows n m for ChunkDense (x [rows, n], kernel [n, m]), 4 rows n m for
  ChunkDenseBackward (d_kernel [n, m], d_x [rows, n]; the two products' multiply-adds, each
  counted as 2; d_bias's sums are left out), 2 r m n for WideRows (y [r, m] from x [r, n]),
  14 per entry for DenseAdam (Adam's update, as factored_adam.flops counts it), 2 per
  multiply-add of a kernel tap inside the image for Conv3x3 and Conv3x3KernelGrad (XLA's count
  of a convolution, which leaves the zero border out). FactoredAdam's depend on its live rows, a
  traced value: factored_adam.flops."""
  counted = {TARGETS[name]: name
             for name in ('ChunkDense', 'ChunkDenseBackward', 'DenseAdam', 'Conv3x3',
                          'Conv3x3KernelGrad', 'WideRows')}
  total = 0
  for line in hlo.splitlines():
    target = re.search(r'custom_call_target="([^"]+)"', line)
    if not target or target[1] not in counted:
      continue
    shapes = lambda text: [[int(d) for d in dims.split(',') if d]
                           for dims in re.findall(r'f32\[([\d,]*)\]', text)]
    results = shapes(line.split('custom-call(')[0])
    operands = shapes(line.split('operand_layout_constraints=')[-1].split('custom_call_target')[0]
                      .split(', api_version')[0])
    name = counted[target[1]]
    if name == 'DenseAdam':
      total += 14 * math.prod(results[0])
    elif name == 'ChunkDense':
      total += 2 * math.prod(operands[0]) * operands[1][-1]
    elif name == 'ChunkDenseBackward':
      total += 4 * math.prod(results[0]) * results[1][-2]
    elif name == 'WideRows':
      total += 2 * math.prod(results[0]) * operands[0][-1]
    else:  # x [..., N, H, W, C] first; F: the output's or the output gradient's last dimension
      x, features = operands[0], (results[0] if name == 'Conv3x3' else operands[1])[-1]
      padding = int(re.search(r'padding = (\d+)', line)[1])
      total += (2 * math.prod(x[:-3]) * x[-1] * features
                * _taps(x[-3], padding) * _taps(x[-2], padding))
  return total


def _taps(size, padding):
  """How many of a 3-tap kernel's taps fall inside the input along one dimension of `size`
  padded by `padding`, summed over the size + 2 padding - 2 outputs."""
  return sum(0 <= out + tap - padding < size
             for out in range(size + 2 * padding - 2) for tap in range(3))


def main():
  """Builds the kernels now, whatever the backend, and prints one line: where they are, and
  whether they were there or the seconds until they were (built by this process, or by one it
  waited for), or why they cannot be built (exit status 1)."""
  tic, existed = time.perf_counter(), _path().exists()
  failure = _build_failure()
  if failure:
    print(f"hypermask_jax C++ kernels: {failure}; the steps use XLA's own code instead")
    return 1
  done = 'already built' if existed else f'built in {time.perf_counter() - tic:.1f} s'
  print(f'hypermask_jax C++ kernels: {_path()} ({done})')
  return 0


if __name__ == '__main__':
  sys.exit(main())
