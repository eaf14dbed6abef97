# Link abseil and Protocol Buffers (and later gRPC) from Debian's static archives instead of their ~35 shared
# objects. The dynamic loader's relocation work for those libraries cost ~2.5 ms on every `sandbox-agent run`
# (measured with LD_DEBUG=statistics), more than a whole bubblewrap start. glibc and libstdc++ stay shared.
#
# sbx_use_static_archives(<imported targets...>): points each imported target at lib<name>.a beside its .so.
function(sbx_use_static_archives)
  foreach(target IN LISTS ARGN)
    if(NOT TARGET ${target})
      continue()
    endif()
    get_target_property(type ${target} TYPE)
    if(NOT type STREQUAL "SHARED_LIBRARY" AND NOT type STREQUAL "UNKNOWN_LIBRARY")
      continue()
    endif()
    foreach(prop IMPORTED_LOCATION IMPORTED_LOCATION_NONE IMPORTED_LOCATION_RELEASE IMPORTED_LOCATION_RELWITHDEBINFO)
      get_target_property(location ${target} ${prop})
      if(location)
        string(REGEX REPLACE "\\.so(\\.[0-9.]+)?$" ".a" archive "${location}")
        if(EXISTS "${archive}")
          set_target_properties(${target} PROPERTIES ${prop} "${archive}")
          set_property(TARGET ${target} PROPERTY IMPORTED_SONAME "")
          set_property(TARGET ${target} PROPERTY IMPORTED_NO_SONAME TRUE)
        endif()
      endif()
    endforeach()
  endforeach()
endfunction()
