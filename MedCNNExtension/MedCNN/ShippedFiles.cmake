# The files the extension ships in MedCNNEngine/, the same as the Python wheel's
# (tests/test_packaging.py builds both and compares them): the engine, every file of src/medcnn
# but Python's caches, and of each bundle the files that monai_bundle/shipped_files.txt names
# (setup.py reads the same list), under medcnn/monai_bundle/ where the engine finds them
# (medcnn/catalog.py, bundles_dir).
#
# In: MEDCNN_REPOSITORY_DIR. Out: MEDCNN_SHIPPED_SOURCES (absolute paths) and
# MEDCNN_SHIPPED_DESTINATIONS (the same files relative to MedCNNEngine/), in the same order.
# `cmake -DMEDCNN_REPOSITORY_DIR=<checkout> -P ShippedFiles.cmake` prints the destinations.

set(MEDCNN_SHIPPED_SOURCES)
set(MEDCNN_SHIPPED_DESTINATIONS)

file(GLOB_RECURSE medcnn_engine_files RELATIVE ${MEDCNN_REPOSITORY_DIR}/src
  ${MEDCNN_REPOSITORY_DIR}/src/medcnn/*)
list(FILTER medcnn_engine_files EXCLUDE REGEX "(^|/)__pycache__/|\\.py[co]$")
foreach(file ${medcnn_engine_files})
  list(APPEND MEDCNN_SHIPPED_SOURCES ${MEDCNN_REPOSITORY_DIR}/src/${file})
  list(APPEND MEDCNN_SHIPPED_DESTINATIONS ${file})
endforeach()

file(STRINGS ${MEDCNN_REPOSITORY_DIR}/monai_bundle/shipped_files.txt medcnn_bundle_patterns
  REGEX "^[^#]")
foreach(pattern ${medcnn_bundle_patterns})
  string(STRIP "${pattern}" pattern)
  if(pattern STREQUAL "")
    continue()
  endif()
  file(GLOB medcnn_bundle_files LIST_DIRECTORIES false RELATIVE ${MEDCNN_REPOSITORY_DIR}
    ${MEDCNN_REPOSITORY_DIR}/monai_bundle/*/${pattern})
  foreach(file ${medcnn_bundle_files})
    list(APPEND MEDCNN_SHIPPED_SOURCES ${MEDCNN_REPOSITORY_DIR}/${file})
    list(APPEND MEDCNN_SHIPPED_DESTINATIONS medcnn/${file})
  endforeach()
endforeach()

if(CMAKE_SCRIPT_MODE_FILE STREQUAL CMAKE_CURRENT_LIST_FILE)
  foreach(destination ${MEDCNN_SHIPPED_DESTINATIONS})
    message("${destination}")
  endforeach()
endif()
