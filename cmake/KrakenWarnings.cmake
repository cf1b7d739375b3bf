# Warning flags shared by every target of the project.
set(KR_WARNINGS -Wall -Wextra -Wshadow -Wstrict-prototypes -Wmissing-prototypes
    -Wpointer-arith -Wformat=2 -Wundef -Wvla -Wno-unused-parameter)
add_compile_options(${KR_WARNINGS})
option(KR_WERROR "Treat warnings as errors" OFF)
if(KR_WERROR)
  add_compile_options(-Werror)
endif()
