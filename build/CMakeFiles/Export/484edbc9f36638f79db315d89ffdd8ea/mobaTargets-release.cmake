#----------------------------------------------------------------
# Generated CMake target import file for configuration "Release".
#----------------------------------------------------------------

# Commands may need to know the format version.
set(CMAKE_IMPORT_FILE_VERSION 1)

# Import target "moba::moba" for configuration "Release"
set_property(TARGET moba::moba APPEND PROPERTY IMPORTED_CONFIGURATIONS RELEASE)
set_target_properties(moba::moba PROPERTIES
  IMPORTED_LINK_INTERFACE_LANGUAGES_RELEASE "CXX"
  IMPORTED_LOCATION_RELEASE "${_IMPORT_PREFIX}/lib/libmoba.a"
  )

list(APPEND _cmake_import_check_targets moba::moba )
list(APPEND _cmake_import_check_files_for_moba::moba "${_IMPORT_PREFIX}/lib/libmoba.a" )

# Commands beyond this point should not need to know the version.
set(CMAKE_IMPORT_FILE_VERSION)
