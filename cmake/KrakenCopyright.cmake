# The Debian copyright file (machine-readable format 1.0, DEP-5) made from LICENSE, so the
# package says exactly what the tree's licence says. Run as a script at build time:
#   cmake -DLICENSE=<tree>/LICENSE -DOUT=<build>/copyright -P cmake/KrakenCopyright.cmake
# LICENSE is the MIT licence text ("Copyright (c) <years> <holders>" then the terms), which
# DEP-5 calls Expat.
file(READ "${LICENSE}" text)
if(NOT text MATCHES "Copyright \\(c\\) ([^\n]+)\n")
  message(FATAL_ERROR "${LICENSE}: no 'Copyright (c) ...' line")
endif()
set(holders "${CMAKE_MATCH_1}")
string(FIND "${text}" "Permission is hereby granted" start)
if(start LESS 0)
  message(FATAL_ERROR "${LICENSE}: not the MIT (Expat) licence text")
endif()
string(SUBSTRING "${text}" ${start} -1 terms)
string(STRIP "${terms}" terms)
# DEP-5 continuation lines: one leading space, an empty line written as " ."
string(REPLACE "\n" "\n " terms "${terms}")
string(REPLACE "\n \n" "\n .\n" terms "${terms}")
file(WRITE "${OUT}"
"Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: kraken

Files: *
Copyright: ${holders}
License: Expat
 ${terms}
")
