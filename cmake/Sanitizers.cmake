# The sanitizer builds (README, "Fuzzing and sanitizers"); each is its own build directory, never `build`.
#
#   -DSBX_SANITIZE=ON  (build-asan, gcc or clang): every target is compiled and linked with
#                      -fsanitize=address,undefined, except the programs linked -static (sandbox-init, the test
#                      probes: ASan cannot link statically) and the libraries they link, which are built plain:
#                      sbx_init_drivers and the objects of sbx_wire and sbx_base it takes (frame.cc, sha256.cc, the
#                      init protocol's messages). The fuzz targets cover frame.cc and cdp.cc under ASan instead.
#   -DSBX_FUZZ=ON      (build-fuzz, clang only): the product libraries are compiled with
#                      -fsanitize=fuzzer-no-link,address,undefined and tests/fuzz builds the libFuzzer targets.
#                      Build only the targets named in tests/fuzz/run.sh: the static programs are not usable
#                      here (nothing unsanitizes them, so the fuzzed libraries keep their instrumentation).
# UBSan findings abort (-fno-sanitize-recover), so a finding fails the test or the fuzz run.

set(SBX_SANITIZER_FLAGS "")
if(SBX_SANITIZE AND SBX_FUZZ)
  message(FATAL_ERROR "SBX_SANITIZE and SBX_FUZZ are separate builds (build-asan, build-fuzz): pick one")
endif()
if(SBX_SANITIZE)
  set(SBX_SANITIZER_FLAGS -fsanitize=address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer)
  add_compile_options(${SBX_SANITIZER_FLAGS})
  add_link_options(-fsanitize=address,undefined)
elseif(SBX_FUZZ)
  if(NOT CMAKE_CXX_COMPILER_ID STREQUAL "Clang")
    message(FATAL_ERROR "SBX_FUZZ needs clang (libFuzzer): configure with CC=clang CXX=clang++")
  endif()
  set(SBX_SANITIZER_FLAGS -fsanitize=fuzzer-no-link,address,undefined -fno-sanitize-recover=undefined
                          -fno-omit-frame-pointer)
  add_compile_options(${SBX_SANITIZER_FLAGS})
  add_link_options(-fsanitize=address,undefined)
  # The project's warnings are gcc's; clang's extra ones (designated initializers leaving fields to zero) stay
  # warnings here.
  add_compile_options(-Wno-error=missing-field-initializers)
endif()

# sbx_unsanitize_static_programs(): after every target exists, strips the sanitizer flags from each
# executable linked with -static and, transitively, from the project libraries it links.
function(sbx_unsanitize_static_programs)
  set(dirs ${PROJECT_SOURCE_DIR})
  set(all_targets)
  while(dirs)
    list(POP_FRONT dirs dir)
    get_property(targets DIRECTORY ${dir} PROPERTY BUILDSYSTEM_TARGETS)
    list(APPEND all_targets ${targets})
    get_property(subdirs DIRECTORY ${dir} PROPERTY SUBDIRECTORIES)
    list(APPEND dirs ${subdirs})
  endwhile()
  set(queue)
  foreach(t ${all_targets})
    get_target_property(type ${t} TYPE)
    get_target_property(link_options ${t} LINK_OPTIONS)
    if(type STREQUAL "EXECUTABLE" AND link_options AND "-static" IN_LIST link_options)
      list(APPEND queue ${t})
    endif()
  endforeach()
  set(done)
  while(queue)
    list(POP_FRONT queue t)
    if(t IN_LIST done OR NOT TARGET ${t})
      continue()
    endif()
    get_target_property(imported ${t} IMPORTED)
    get_target_property(type ${t} TYPE)
    if(imported OR type STREQUAL "INTERFACE_LIBRARY")
      continue()
    endif()
    list(APPEND done ${t})
    foreach(prop COMPILE_OPTIONS LINK_OPTIONS)
      get_target_property(values ${t} ${prop})
      if(values)
        list(REMOVE_ITEM values ${SBX_SANITIZER_FLAGS} -fsanitize=address,undefined)
        set_property(TARGET ${t} PROPERTY ${prop} ${values})
      endif()
    endforeach()
    # What it links, and object libraries pulled in with $<TARGET_OBJECTS:...>.
    get_target_property(deps ${t} LINK_LIBRARIES)
    get_target_property(sources ${t} SOURCES)
    foreach(s ${sources})
      if(s MATCHES "^\\$<TARGET_OBJECTS:([^>]+)>$")
        list(APPEND deps ${CMAKE_MATCH_1})
      endif()
    endforeach()
    foreach(d ${deps})
      if(TARGET ${d})
        list(APPEND queue ${d})
      endif()
    endforeach()
  endwhile()
  message(STATUS "Built without sanitizers (linked -static, or linked into such a program): ${done}")
  # The jail child (everything between clone and execve, jail_child.h, entered from jail.cc) runs in a copy of
  # a multithreaded process on a stack ASan does not know: instrumented, it prints "ASan is ignoring requested
  # __asan_handle_no_return" into the jail's stderr, and it must not run ASan's runtime there anyway. So
  # jail_child.cc, jail_clone.cc (which clones and calls into it) and jail.cc are built plain.
  set_source_files_properties(${PROJECT_SOURCE_DIR}/sandbox/jail_child.cc ${PROJECT_SOURCE_DIR}/sandbox/jail.cc
                              ${PROJECT_SOURCE_DIR}/sandbox/jail_clone.cc
                              DIRECTORY ${PROJECT_SOURCE_DIR}/sandbox PROPERTIES COMPILE_OPTIONS -fno-sanitize=all)
  # The one-shot PID 1 (wire/one_shot_init.h) runs in that jail child too, when it stays PID 1 instead of
  # exec'ing sandbox-init, and starts the workload on a stack of its own.
  set_source_files_properties(${PROJECT_SOURCE_DIR}/wire/one_shot_init.cc ${PROJECT_SOURCE_DIR}/wire/landlock.cc
                              DIRECTORY ${PROJECT_SOURCE_DIR}/wire PROPERTIES COMPILE_OPTIONS -fno-sanitize=all)
endfunction()
