"""A local, Apiframe-compatible emulator of the Flux 2 Flex API, with fault injection and accounting."""

from flexflow.emulator.faults import Fault, FaultPlan, FaultRule
from flexflow.emulator.server import EmulatorServer
from flexflow.emulator.state import DEFAULT_TEST_KEY, EmulatorConfig, EmulatorState

__all__ = ["DEFAULT_TEST_KEY", "EmulatorConfig", "EmulatorServer", "EmulatorState", "Fault", "FaultPlan", "FaultRule"]
