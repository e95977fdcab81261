// Umbrella header of the moba library.
#pragma once

#include "moba/attention.hpp"
#include "moba/error.hpp"
#include "moba/half.hpp"
#include "moba/influence.hpp"
#include "moba/kv_cache.hpp"
#include "moba/moa_plan.hpp"
#include "moba/paged_attention.hpp"
#include "moba/paged_attention_backward.hpp"
#include "moba/params.hpp"
#include "moba/tensor.hpp"
#include "moba/version.hpp"
