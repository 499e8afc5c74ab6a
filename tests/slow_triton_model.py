"""A test double for the live overlap test, installed as a version's model.py in place of the
real Python-backend model (renamed tecafn_model.py beside it): every request is served by the real
model, but one whose audio frames hold MARKER first sleeps SLOW_S, as a Triton call that hangs."""
import time

import numpy as np
import triton_python_backend_utils as pb_utils
from tecafn_model import TritonPythonModel as RealModel

MARKER = 4242.0
SLOW_S = 4.0


class TritonPythonModel(RealModel):
    def execute(self, requests):
        for request in requests:
            audio = pb_utils.get_input_tensor_by_name(request, "audio")
            if audio is not None and np.any(audio.as_numpy() == MARKER):
                time.sleep(SLOW_S)
        return super().execute(requests)
