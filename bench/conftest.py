import pytest
import torch


@pytest.fixture(scope="session", autouse=True)
def two_threads():
    torch.set_num_threads(2)


@pytest.fixture(scope="session")
def smollm2_path():
    from hpo_engine.assets.smollm2 import smollm2_path as build
    return build()
