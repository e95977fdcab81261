// One problem staged on one backend: inputs copied to the backend's device once, outputs
// allocated there, forward/backward run through the public API. `bench` times forward() and
// backward() alone; `check` copies the results back to the host.
#pragma once

#include <vector>

#include "device.hpp"
#include "moba/moba.hpp"
#include "verify_types.hpp"

namespace moba::cli {

class Session {
 public:
  Session(const Problem& p, const Inputs& in, Backend backend, const RunOptions& options);

  void forward();   // writes out, lse, selection on the backend's device
  void backward();  // from the session's out, lse and selection
  void synchronize();

  // Replace the saved forward state (e.g. run the reference backward on another backend's
  // selection).
  void set_forward_state(const ForwardResult& state);
  ForwardResult forward_result();    // copied to the host
  BackwardResult backward_result();  // copied to the host

 private:
  // A tensor on the backend's device, with its host copy.
  struct Slot {
    HostTensor host;
    DeviceBuffer device;
    TensorView view;
  };
  Slot stage(HostTensor host);
  void fetch(Slot& s);
  void store(Slot& s, const HostTensor& value);

  Problem problem_;
  Backend backend_;
  RunOptions options_;
  bool on_cuda_;
  Slot q_, k_, v_, dout_, cu_, out_, lse_, selection_, dq_, dk_, dv_;
};

}  // namespace moba::cli
