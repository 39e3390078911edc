package autoflag

import "testing"

func TestParse(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want Setting
		err  bool
	}{
		{"auto", Auto, false},
		{"", Auto, false},
		{"runtime", Setting{}, false},
		{"1", Setting{Fixed: 1}, false},
		{"25", Setting{Fixed: 25}, false},
		{"0", Setting{}, true},
		{"-2", Setting{}, true},
		{"two", Setting{}, true},
		{"off", Setting{}, true},
	} {
		got, err := Parse(tc.in)
		if (err != nil) != tc.err || got != tc.want {
			t.Errorf("Parse(%q) = %v, %v; want %v, error %v", tc.in, got, err, tc.want, tc.err)
		}
		if err == nil && tc.in != "" {
			if again, _ := Parse(got.String()); again != got {
				t.Errorf("Parse(%q).String() = %q does not parse back", tc.in, got.String())
			}
		}
		var s Setting
		if err := s.Set(tc.in); (err != nil) != tc.err || err == nil && s != tc.want {
			t.Errorf("Set(%q): %v, %v", tc.in, s, err)
		}
	}
}
