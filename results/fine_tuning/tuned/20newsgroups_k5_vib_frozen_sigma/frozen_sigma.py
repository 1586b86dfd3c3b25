"""VIB with the head's noise scale frozen at its initial value (sigma = 0.1): only the mean term of the KL acts."""
import runpy, sys
sys.path.insert(0, "/work/main/recipes")
from hf_knife.penalties import information_bottleneck as ib
original = ib.GaussianHead.reset_parameters
def frozen(self):
    original(self)
    self.log_sigma.weight.requires_grad_(False)
    self.log_sigma.bias.requires_grad_(False)
ib.GaussianHead.reset_parameters = frozen
sys.argv = ["fine_tuning.py", *sys.argv[1:]]
runpy.run_path("/work/main/recipes/fine_tuning.py", run_name="__main__")
