"""HyperMask on Permuted MNIST-10 with the published best hyperparameters (docs/methods.md).

Variants (configs/variants.py): published, `:small` (a few minutes on a 2-core CPU), `:seeds`.
"""

import ml_collections
from ml_collections import config_dict

from configs import variants

VARIANTS = variants.VARIANTS


def get_config(variant='published'):
  return variants.apply(published(), variant, small)


def published():
  """Every field of every config, with HyperMask's published Permuted MNIST-10 settings."""
  config = ml_collections.ConfigDict()
  config.method = 'hypermask'
  config.dataset = 'permuted_mnist'
  config.data_dir = ''  # '' = TFDS's default data_dir
  config.download = True  # let TFDS download if the dataset is not prepared in data_dir
  config.seed = 1
  # How the MNIST tasks are formed: 'hypermask' (pad to 1024 inputs, every task permuted from the
  # run's seed, a validation split, Split MNIST augmented and normalised) or 'hypercl' (784
  # inputs, task 0 unpermuted, fixed permutations, no validation split, no augmentation).
  config.data_protocol = 'hypermask'
  config.num_tasks = 10
  config.max_tasks = config_dict.placeholder(int)  # size of per-task arrays; None: num_tasks
  config.target = 'mlp'  # or 'resnet20', 'zenkenet' (split_cifar100)
  config.target_hidden = (1000, 1000)  # mlp
  config.width_factor = 2  # resnet20: channels 16/32/64 times this
  config.batch_norm = 'batch'  # resnet20: batch statistics also at eval, or 'running' (per task)
  config.zenkenet_dropout = 'off'  # zenkenet: 'off' (as published) or 'architecture' (0.25/0.5)
  config.output_heads = 'shared'  # or 'per_task': max_tasks heads, generated (HNET) or masked
  config.embedding_size = 24
  config.hnet_hidden = (100, 100)
  config.hnet_activation = 'elu'
  config.hnet_init = 'torch'  # PyTorch's Linear init, or 'xavier' (Xavier weights, zero biases)
  config.chunk_size = 0  # > 0: a chunked hypernetwork producing this many outputs per chunk
  config.chunk_embedding_size = 8
  config.learning_rate = 1e-3
  config.batch_size = 128
  config.steps_per_task = 5000  # None when training by epochs
  config.epochs_per_task = 0  # > 0: train by epochs instead (steps_per_task must be None)
  config.lr_schedule = 'constant'  # or 'plateau': ReduceLROnPlateau on validation accuracy
  config.plateau_factor = 0.1 ** 0.5
  config.plateau_patience = 5  # epochs
  config.plateau_min_lr = 5e-7
  config.selection = 'last'  # or 'best_val' / 'best_val_loss': per task, the params of the epoch
  # of best validation accuracy / lowest validation loss
  config.selection_every_steps = 0  # > 0: also check for the best after steps 1, 1 + this, ...
  config.beta = 5e-4
  config.lam = 1e-3
  config.l1_masked = True
  config.sparsity = 0.0
  config.reg_subset = 0  # > 0: regularise a random subset of this many previous tasks per step
  config.reg_targets = 'stored'  # or 'snapshot': recompute targets from a hypernet snapshot (HNET)
  config.lookahead = False  # HNET: regularise at theta + the task-loss update
  config.train_embeddings = 'all'  # HNET: or 'current', only the current task's embedding
  config.task_inference = 'none'  # or 'entropy', 'fecam': also test with the task inferred
  config.fecam_scenario = 5  # split_cifar100_fecam: 5 (5 x 20 classes), 6, 11 or 21 tasks
  config.log_every_steps = 500
  config.eval_batch_size = 1000
  config.checkpoint_every_steps = 2000  # and at the end of every task
  config.checkpoints_to_keep = 3
  config.final_checkpoints_to_keep = 1  # once the run has finished; 0: remove them all
  config.max_call_seconds = 10.0  # wall-time bound of one compiled call: how long a stop waits
  config.compilation_cache = '~/.cache/hypermask_jax/compiled'  # '' : compile in every process
  config.runs_per_program = 0  # a sweep's runs that share one compiled program; 0: all that fit
  config.sweep = ml_collections.ConfigDict()  # field -> values; the runs are their product
  return config


def small(config):
  config.num_tasks = 3
  config.target_hidden = (100, 100)
  config.hnet_hidden = (25, 25)
  config.steps_per_task = 1500
  config.log_every_steps = 250
  config.checkpoint_every_steps = 500
