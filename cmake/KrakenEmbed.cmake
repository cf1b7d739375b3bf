# Turn a text file into a C header holding it as a NUL-terminated char array:
#   cmake -DIN=page.html -DOUT=page.h -DNAME=kr_http_page -P KrakenEmbed.cmake
# (the status page is edited as HTML and served from the binary: no file to install).
file(READ "${IN}" hex HEX)
string(REGEX REPLACE "([0-9a-f][0-9a-f])" "0x\\1," body "${hex}")
string(REGEX REPLACE "(0x..,0x..,0x..,0x..,0x..,0x..,0x..,0x..,0x..,0x..,0x..,0x..,)" "\\1\n" body "${body}")
file(WRITE "${OUT}.tmp" "/* Generated from ${NAME}'s source by cmake/KrakenEmbed.cmake: do not edit. */\n"
     "static const char ${NAME}[] = {\n${body}0x00};\n")
file(RENAME "${OUT}.tmp" "${OUT}")
