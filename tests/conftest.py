"""Test-session order: the test files that import TensorFlow run last.

The SyncMNIST and trainer tests assert that TensorFlow never enters the process (that
path must stay TF-free), while the Something-Something pipeline tests import it, and an
imported module stays in `sys.modules` for the rest of the session. Running those files
after all others keeps the earlier assertions meaningful in a whole-suite run; the order
within each group is unchanged (stable sort).
"""

TENSORFLOW_TEST_FILES = ('test_ssv1_data.py', 'test_ssv1_train.py')


def pytest_collection_modifyitems(session, config, items):  # pylint: disable=unused-argument
  items.sort(key=lambda item: item.path.name in TENSORFLOW_TEST_FILES)
