# cmake -DBIN=... -DNAME=... -DSUMMARY=... -DVERSION=... -DOUT=... -P KrakenManFromHelp.cmake
# Writes a man page (roff) whose body is the program's own --help text, set as it prints
# it, so the page cannot drift from the program. Used for kraken-bench(1).
execute_process(COMMAND ${BIN} --help OUTPUT_VARIABLE help RESULT_VARIABLE rc)
if(NOT rc EQUAL 0)
  message(FATAL_ERROR "${BIN} --help exited ${rc}")
endif()
string(REPLACE "\\" "\\e" help "${help}")
string(REPLACE "-" "\\-" help "${help}")
# a line starting with . or ' would be a roff request
string(REGEX REPLACE "(^|\n)([.'])" "\\1\\\\&\\2" help "${help}")
string(TOUPPER "${NAME}" upper)
string(REPLACE "-" "\\-" rname "${NAME}")
file(WRITE ${OUT}
".\\\" Generated from `${NAME} --help`; do not edit.
.TH ${upper} 1 \"\" \"${NAME} ${VERSION}\" \"User Commands\"
.SH NAME
${rname} \\- ${SUMMARY}
.SH DESCRIPTION
The text below is what \\fB${rname} \\-\\-help\\fR prints.
.PP
.nf
${help}.fi
.SH SEE ALSO
.BR kraken (1)
")
