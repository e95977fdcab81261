# CUTLASS/CuTe headers for the CUDA backend (the sm_90a wgmma, TMA, mbarrier and named-barrier
# primitives of src/cuda/forward/hopper_wgmma.cuh and sm90_pipeline.cuh). Header-only; pinned to
# the `nvidia-cutlass` 4.2.0.0 wheel, whose headers live under cutlass_library/source/include.
# Sets MOBA_CUTLASS_INCLUDE to a directory holding cute/ and cutlass/, found in this order:
#   1. -DMOBA_CUTLASS_INCLUDE=<dir> given by the user;
#   2. the installed python package (`pip install nvidia-cutlass==4.2.0.0`, scripts/setup.sh),
#      located without importing it;
#   3. the wheel file in <source>/.whl/ (the GPU machine has no network and gets it there);
#   4. the wheel downloaded from PyPI (URL and SHA256 pinned below) into the build directory.
# Whatever is found must be CUTLASS 4.2.x (cutlass/version.h).
set(MOBA_CUTLASS_VERSION "4.2.0.0")
set(moba_cutlass_wheel_name "nvidia_cutlass-${MOBA_CUTLASS_VERSION}-py3-none-any.whl")
set(moba_cutlass_wheel_url
  "https://files.pythonhosted.org/packages/21/6b/e86fc2fd536dd4b8bd2209aa31d7002610c501b0802337787eac9c9b328c/${moba_cutlass_wheel_name}")
set(moba_cutlass_wheel_sha256 "f9599ada45c7bcb6bf53f7d3f0a7d154183e53451c01bfa59eecd37dd4a693f6")
set(MOBA_CUTLASS_INCLUDE "" CACHE PATH
  "Directory with CUTLASS ${MOBA_CUTLASS_VERSION}'s cute/ and cutlass/ headers (empty: find or fetch)")

function(moba_cutlass_from_python out)
  set(${out} "" PARENT_SCOPE)
  set(py "${Python3_EXECUTABLE}")
  if(NOT py)
    set(py "${Python_EXECUTABLE}")
  endif()
  if(NOT py)
    find_program(MOBA_CUTLASS_PYTHON NAMES python3 python)
    set(py "${MOBA_CUTLASS_PYTHON}")
  endif()
  if(NOT py)
    return()
  endif()
  execute_process(
    COMMAND "${py}" -c "import importlib.util as u, os; s = u.find_spec('cutlass_library'); print(os.path.join(list(s.submodule_search_locations)[0], 'source', 'include') if s else '')"
    OUTPUT_VARIABLE dir OUTPUT_STRIP_TRAILING_WHITESPACE ERROR_QUIET RESULT_VARIABLE rc)
  if(rc EQUAL 0 AND dir AND EXISTS "${dir}/cute/tensor.hpp")
    set(${out} "${dir}" PARENT_SCOPE)
  endif()
endfunction()

function(moba_cutlass_from_wheel out)
  set(dest "${CMAKE_BINARY_DIR}/_deps/cutlass-${MOBA_CUTLASS_VERSION}")
  set(${out} "${dest}/cutlass_library/source/include" PARENT_SCOPE)
  if(EXISTS "${dest}/cutlass_library/source/include/cute/tensor.hpp")
    return()
  endif()
  set(wheel "${PROJECT_SOURCE_DIR}/.whl/${moba_cutlass_wheel_name}")
  if(NOT EXISTS "${wheel}")
    set(wheel "${CMAKE_BINARY_DIR}/_deps/${moba_cutlass_wheel_name}")
    message(STATUS "moba: downloading ${moba_cutlass_wheel_url}")
    file(DOWNLOAD "${moba_cutlass_wheel_url}" "${wheel}" STATUS st
      EXPECTED_HASH SHA256=${moba_cutlass_wheel_sha256})
    list(GET st 0 code)
    if(NOT code EQUAL 0)
      message(FATAL_ERROR "moba: could not download ${moba_cutlass_wheel_url} (${st}); "
        "install it (pip install nvidia-cutlass==${MOBA_CUTLASS_VERSION}), put the wheel in "
        "${PROJECT_SOURCE_DIR}/.whl/ or pass -DMOBA_CUTLASS_INCLUDE=<dir with cute/ and cutlass/>")
    endif()
  else()
    file(SHA256 "${wheel}" sum)
    if(NOT sum STREQUAL moba_cutlass_wheel_sha256)
      message(FATAL_ERROR "moba: ${wheel} has SHA256 ${sum}, expected ${moba_cutlass_wheel_sha256}")
    endif()
  endif()
  message(STATUS "moba: unpacking CUTLASS headers from ${wheel}")
  file(ARCHIVE_EXTRACT INPUT "${wheel}" DESTINATION "${dest}"
    PATTERNS "cutlass_library/source/include/*")
endfunction()

if(NOT MOBA_CUTLASS_INCLUDE)
  moba_cutlass_from_python(moba_cutlass_dir)
  if(moba_cutlass_dir)
    set(moba_cutlass_how "installed python package cutlass_library")
  else()
    moba_cutlass_from_wheel(moba_cutlass_dir)
    set(moba_cutlass_how "the pinned wheel")
  endif()
  set(MOBA_CUTLASS_INCLUDE "${moba_cutlass_dir}" CACHE PATH
    "Directory with CUTLASS ${MOBA_CUTLASS_VERSION}'s cute/ and cutlass/ headers (empty: find or fetch)" FORCE)
else()
  set(moba_cutlass_how "MOBA_CUTLASS_INCLUDE")
endif()

if(NOT EXISTS "${MOBA_CUTLASS_INCLUDE}/cutlass/version.h")
  message(FATAL_ERROR "moba: no CUTLASS headers at MOBA_CUTLASS_INCLUDE=${MOBA_CUTLASS_INCLUDE}")
endif()
file(STRINGS "${MOBA_CUTLASS_INCLUDE}/cutlass/version.h" moba_cutlass_ver
  REGEX "^#define CUTLASS_(MAJOR|MINOR) ")
string(REGEX REPLACE ".*MAJOR ([0-9]+).*MINOR ([0-9]+).*" "\\1.\\2" moba_cutlass_ver "${moba_cutlass_ver}")
if(NOT moba_cutlass_ver VERSION_EQUAL 4.2)
  message(FATAL_ERROR "moba: CUTLASS at ${MOBA_CUTLASS_INCLUDE} is ${moba_cutlass_ver}, "
    "expected ${MOBA_CUTLASS_VERSION} (pip install nvidia-cutlass==${MOBA_CUTLASS_VERSION})")
endif()
message(STATUS "moba: CUTLASS ${moba_cutlass_ver} headers at ${MOBA_CUTLASS_INCLUDE} (${moba_cutlass_how})")
