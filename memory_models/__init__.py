"""memory_models: recurrent memory cells behind one interface with explicit state.

    import memory_models
    cell = memory_models.make("lmu", input_size=8, hidden_size=64)
    state = cell.initial_state(batch_size=4)
    y, state = cell.scan(x, state, resets=resets)       # x (4, T, 8) -> y (4, T, 64)

memory_models.laws checks the interface laws on any cell (tests/test_laws.py runs them all).
"""

from .interface import RecurrentMemory, State, scan_episodes_as_rows
from .deep import DeepMemory
from .registry import UnknownKeywordError, available, check_kwargs, get, keywords, make, register
from .reference import GRU, LSTM, MLP
from .lmu import LMU, LMUFFT, LMUCell, leCunUniform
from .discretization import DISCRETIZATIONS
from .lrnn import LRNN, LTI_LRNN, LTV_LRNN
from .s4d import S4D
from .event_ssm import EventSSM
from .ffm import FFM
from .lru import LRU
from .min_gru import MinGRU
from .xlstm import MLSTM, SLSTM
from .mamba import Mamba, Mamba2
from .rtu import RTU
from .shm import SHM
from .rnns import Elman, IndRNN
from .windows import FrameConv, FrameStack, PosMLP
from .fast_weights import FastWeightProgrammer, LinearAttention
from .delta_net import DeltaNet, GatedDeltaNet
from .attention import Transformer
from .gtrxl import GTrXL

__all__ = [
    "RecurrentMemory", "State", "scan_episodes_as_rows", "DeepMemory",
    "available", "check_kwargs", "get", "keywords", "make", "register", "UnknownKeywordError",
    "GRU", "LSTM", "MLP",
    "LMUCell", "LMU", "LMUFFT", "leCunUniform",
    "DISCRETIZATIONS", "LRNN", "LTI_LRNN", "LTV_LRNN", "S4D", "EventSSM",
    "FFM", "LRU", "MinGRU", "MLSTM", "SLSTM", "Mamba", "Mamba2", "RTU", "SHM",
    "Elman", "IndRNN", "PosMLP", "FrameStack", "FrameConv",
    "FastWeightProgrammer", "LinearAttention",
    "DeltaNet", "GatedDeltaNet",
    "Transformer", "GTrXL",
]
