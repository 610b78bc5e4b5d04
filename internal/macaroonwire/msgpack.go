package macaroonwire

// WellFormed reports whether b is exactly one msgpack value whose every
// declared length fits in b.
//
// The library trusts length headers: a 13-byte token declaring 2^31 caveats
// makes it allocate a 32 GiB slice before it notices the input ended. Every
// value takes at least one byte, so after this check nothing it allocates
// can outgrow the input. It also refuses trailing bytes, which the library
// would ignore. It is iterative, so deep nesting costs no stack.
func WellFormed(b []byte) bool {
	pending := 1 // values still to read
	for pending > 0 {
		if len(b) == 0 {
			return false
		}
		c := b[0]
		b = b[1:]
		pending--

		var skip, items uint64 // payload bytes, nested values
		switch {
		case c <= 0x7f || c >= 0xe0 || c == 0xc0 || c == 0xc2 || c == 0xc3: // fixints, nil, bools
		case c <= 0x8f: // fixmap
			items = 2 * uint64(c&0x0f)
		case c <= 0x9f: // fixarray
			items = uint64(c & 0x0f)
		case c <= 0xbf: // fixstr
			skip = uint64(c & 0x1f)
		case c == 0xc1: // never used
			return false
		case c >= 0xca && c <= 0xd3: // float32/64, uint8-64, int8-64
			skip = [...]uint64{4, 8, 1, 2, 4, 8, 1, 2, 4, 8}[c-0xca]
		case c >= 0xd4 && c <= 0xd8: // fixext 1-16: type byte + data
			skip = 1 + 1<<(c-0xd4)
		default: // bin, ext, str, array, map: a big-endian length follows
			w := 4
			switch c {
			case 0xc4, 0xc7, 0xd9:
				w = 1
			case 0xc5, 0xc8, 0xda, 0xdc, 0xde:
				w = 2
			}
			if len(b) < w {
				return false
			}
			var l uint64
			for _, x := range b[:w] {
				l = l<<8 | uint64(x)
			}
			b = b[w:]
			switch c {
			case 0xc7, 0xc8, 0xc9: // ext: type byte + data
				skip = l + 1
			case 0xdc, 0xdd:
				items = l
			case 0xde, 0xdf:
				items = 2 * l
			default: // bin, str
				skip = l
			}
		}
		// Keeps pending <= len(b): each value still to read needs a byte.
		rest := uint64(len(b))
		if skip > rest || uint64(pending)+items > rest-skip {
			return false
		}
		b = b[skip:]
		pending += int(items)
	}
	return len(b) == 0
}
