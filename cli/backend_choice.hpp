// Which backend a command runs on: parsing its name, the default (cuda when a device is
// usable, else cpu) and a clear error when the chosen one is not usable here.
#pragma once

#include <string>
#include <vector>

#include "moba/params.hpp"

namespace moba::cli {

const std::vector<std::string>& backend_names();  // "cpu", "cuda", "reference"
std::string backend_name(Backend b);
// "" picks the default. Throws CliError when the backend is not compiled or has no device.
Backend choose_backend(const std::string& name);

}  // namespace moba::cli
