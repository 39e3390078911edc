package quic

import (
	"errors"
	"sync"

	"github.com/quic-go/quic-go/internal/protocol"
	list "github.com/quic-go/quic-go/internal/utils/linkedlist"
)

// byteInterval is an interval from one ByteCount to the other
type byteInterval struct {
	Start protocol.ByteCount
	End   protocol.ByteCount
}

var byteIntervalElementPool sync.Pool

func init() {
	byteIntervalElementPool = *list.NewPool[byteInterval]()
}

type frameSorterEntry struct {
	Data   []byte
	DoneCb func()
}

type frameSorter struct {
	queue   map[protocol.ByteCount]frameSorterEntry
	readPos protocol.ByteCount
	gaps    *list.List[byteInterval] // qkas patch: nil stands for one gap, [gapStart, MaxByteCount)

	// qkas patch: data that arrives in order, with nothing else queued, waits in head (at
	// readPos) instead of the map, and the map is made only when data arrives out of order. A
	// map that had entries keeps its memory after they are deleted: a long-lived stream that
	// only ever received in order (a control stream) kept a map group (~350 bytes) for its life,
	// and every stream paid the map's allocations.
	head    frameSorterEntry
	hasHead bool

	// qkas patch: while gaps is nil, the received data is one run from 0 and gapStart is where
	// the one gap begins. The list (and its first element) is made only when data arrives out
	// of order (gapList), so the zero frameSorter is ready to use and a stream that receives in
	// order allocates nothing for it.
	gapStart protocol.ByteCount
}

var errDuplicateStreamData = errors.New("duplicate stream data")

func newFrameSorter() *frameSorter {
	return &frameSorter{} // qkas patch: the gap list is made on first use (gapList)
}

// gapList returns the list of gaps, made from gapStart on first use (qkas patch).
func (s *frameSorter) gapList() *list.List[byteInterval] {
	if s.gaps == nil {
		s.gaps = list.NewWithPool[byteInterval](&byteIntervalElementPool)
		s.gaps.PushFront(byteInterval{Start: s.gapStart, End: protocol.MaxByteCount})
	}
	return s.gaps
}

func (s *frameSorter) Push(data []byte, offset protocol.ByteCount, doneCb func()) error {
	err := s.push(data, offset, doneCb)
	if err == errDuplicateStreamData {
		if doneCb != nil {
			doneCb()
		}
		return nil
	}
	return err
}

func (s *frameSorter) push(data []byte, offset protocol.ByteCount, doneCb func()) error {
	if len(data) == 0 {
		return errDuplicateStreamData
	}

	start := offset
	end := offset + protocol.ByteCount(len(data))

	// qkas patch: the in-order fast path (see head), and the map and gap list made on first use.
	if !s.hasHead && len(s.queue) == 0 && start == s.readPos {
		if s.gaps == nil {
			if start == s.gapStart && end < protocol.MaxByteCount {
				s.gapStart = end
				s.head = frameSorterEntry{Data: data, DoneCb: doneCb}
				s.hasHead = true
				return nil
			}
		} else if gap := s.gaps.Front(); s.gaps.Len() == 1 && gap.Value.Start == start && end < gap.Value.End {
			gap.Value.Start = end
			s.head = frameSorterEntry{Data: data, DoneCb: doneCb}
			s.hasHead = true
			return nil
		}
	}
	s.gapList()
	if s.hasHead {
		s.makeQueue()
		s.queue[s.readPos] = s.head
		s.head = frameSorterEntry{}
		s.hasHead = false
	}

	if end <= s.gaps.Front().Value.Start {
		return errDuplicateStreamData
	}

	startGap, startsInGap := s.findStartGap(start)
	endGap, endsInGap := s.findEndGap(startGap, end)

	startGapEqualsEndGap := startGap == endGap

	if (startGapEqualsEndGap && end <= startGap.Value.Start) ||
		(!startGapEqualsEndGap && startGap.Value.End >= endGap.Value.Start && end <= startGap.Value.Start) {
		return errDuplicateStreamData
	}

	startGapNext := startGap.Next()
	startGapEnd := startGap.Value.End // save it, in case startGap is modified
	endGapStart := endGap.Value.Start // save it, in case endGap is modified
	endGapEnd := endGap.Value.End     // save it, in case endGap is modified
	var adjustedStartGapEnd bool
	var wasCut bool

	pos := start
	var hasReplacedAtLeastOne bool
	for {
		oldEntry, ok := s.queue[pos]
		if !ok {
			break
		}
		oldEntryLen := protocol.ByteCount(len(oldEntry.Data))
		if end-pos > oldEntryLen || (hasReplacedAtLeastOne && end-pos == oldEntryLen) {
			// The existing frame is shorter than the new frame. Replace it.
			delete(s.queue, pos)
			pos += oldEntryLen
			hasReplacedAtLeastOne = true
			if oldEntry.DoneCb != nil {
				oldEntry.DoneCb()
			}
		} else {
			if !hasReplacedAtLeastOne {
				return errDuplicateStreamData
			}
			// The existing frame is longer than the new frame.
			// Cut the new frame such that the end aligns with the start of the existing frame.
			data = data[:pos-start]
			end = pos
			wasCut = true
			break
		}
	}

	if !startsInGap && !hasReplacedAtLeastOne {
		// cut the frame, such that it starts at the start of the gap
		data = data[startGap.Value.Start-start:]
		start = startGap.Value.Start
		wasCut = true
	}
	if start <= startGap.Value.Start {
		if end >= startGap.Value.End {
			// The frame covers the whole startGap. Delete the gap.
			s.gaps.Remove(startGap)
		} else {
			startGap.Value.Start = end
		}
	} else if !hasReplacedAtLeastOne {
		startGap.Value.End = start
		adjustedStartGapEnd = true
	}

	if !startGapEqualsEndGap {
		s.deleteConsecutive(startGapEnd)
		var nextGap *list.Element[byteInterval]
		for gap := startGapNext; gap.Value.End < endGapStart; gap = nextGap {
			nextGap = gap.Next()
			s.deleteConsecutive(gap.Value.End)
			s.gaps.Remove(gap)
		}
	}

	if !endsInGap && start != endGapEnd && end > endGapEnd {
		// cut the frame, such that it ends at the end of the gap
		data = data[:endGapEnd-start]
		end = endGapEnd
		wasCut = true
	}
	if end == endGapEnd {
		if !startGapEqualsEndGap {
			// The frame covers the whole endGap. Delete the gap.
			s.gaps.Remove(endGap)
		}
	} else {
		if startGapEqualsEndGap && adjustedStartGapEnd {
			// The frame split the existing gap into two.
			s.gaps.InsertAfter(byteInterval{Start: end, End: startGapEnd}, startGap)
		} else if !startGapEqualsEndGap {
			endGap.Value.Start = end
		}
	}

	if wasCut && len(data) < protocol.MinStreamFrameBufferSize {
		newData := make([]byte, len(data))
		copy(newData, data)
		data = newData
		if doneCb != nil {
			doneCb()
			doneCb = nil
		}
	}

	if s.gaps.Len() > protocol.MaxStreamFrameSorterGaps {
		return errors.New("too many gaps in received data")
	}

	s.makeQueue()
	s.queue[start] = frameSorterEntry{Data: data, DoneCb: doneCb}
	return nil
}

// makeQueue makes the map on first use (qkas patch).
func (s *frameSorter) makeQueue() {
	if s.queue == nil {
		s.queue = make(map[protocol.ByteCount]frameSorterEntry)
	}
}

func (s *frameSorter) findStartGap(offset protocol.ByteCount) (*list.Element[byteInterval], bool) {
	for gap := s.gaps.Front(); gap != nil; gap = gap.Next() {
		if offset >= gap.Value.Start && offset <= gap.Value.End {
			return gap, true
		}
		if offset < gap.Value.Start {
			return gap, false
		}
	}
	panic("no gap found")
}

func (s *frameSorter) findEndGap(startGap *list.Element[byteInterval], offset protocol.ByteCount) (*list.Element[byteInterval], bool) {
	for gap := startGap; gap != nil; gap = gap.Next() {
		if offset >= gap.Value.Start && offset < gap.Value.End {
			return gap, true
		}
		if offset < gap.Value.Start {
			return gap.Prev(), false
		}
	}
	panic("no gap found")
}

// deleteConsecutive deletes consecutive frames from the queue, starting at pos
func (s *frameSorter) deleteConsecutive(pos protocol.ByteCount) {
	for {
		oldEntry, ok := s.queue[pos]
		if !ok {
			break
		}
		oldEntryLen := protocol.ByteCount(len(oldEntry.Data))
		delete(s.queue, pos)
		if oldEntry.DoneCb != nil {
			oldEntry.DoneCb()
		}
		pos += oldEntryLen
	}
}

func (s *frameSorter) Pop() (protocol.ByteCount, []byte, func()) {
	var entry frameSorterEntry
	if s.hasHead { // qkas patch
		entry = s.head
		s.head = frameSorterEntry{}
		s.hasHead = false
	} else {
		var ok bool
		entry, ok = s.queue[s.readPos]
		if !ok {
			return s.readPos, nil, nil
		}
		delete(s.queue, s.readPos)
	}
	offset := s.readPos
	s.readPos += protocol.ByteCount(len(entry.Data))
	if s.gaps != nil && s.gaps.Front().Value.End <= s.readPos { // qkas patch: nil gaps end at MaxByteCount
		panic("frame sorter BUG: read position higher than a gap")
	}
	return offset, entry.Data, entry.DoneCb
}

// HasMoreData says if there is any more data queued at *any* offset.
func (s *frameSorter) HasMoreData() bool {
	return s.hasHead || len(s.queue) > 0
}

// entry returns the data queued at pos (qkas patch: in head or in the map).
func (s *frameSorter) entry(pos protocol.ByteCount) (frameSorterEntry, bool) {
	if s.hasHead && pos == s.readPos {
		return s.head, true
	}
	e, ok := s.queue[pos]
	return e, ok
}

var errTooLittleData = errors.New("too little data")

// Peek copies len(p) consecutive bytes starting at offset into p, without removing them.
// It is only possible to peek from an offset where a frame starts.
//
// If there isn't enough consecutive data available, errTooLittleData is returned.
func (s *frameSorter) Peek(offset protocol.ByteCount, p []byte) error {
	if len(p) == 0 {
		return nil
	}

	// first, check if we have enough consecutive data available
	pos := offset
	remaining := len(p)
	for remaining > 0 {
		entry, ok := s.entry(pos)
		if !ok {
			return errTooLittleData
		}
		entryLen := len(entry.Data)
		if remaining <= entryLen {
			break // enough data available
		}
		remaining -= entryLen
		pos += protocol.ByteCount(entryLen)
	}

	pos = offset
	var copied int
	for copied < len(p) {
		entry, _ := s.entry(pos) // the entry is guaranteed to exist from the check above
		copied += copy(p[copied:], entry.Data)
		pos += protocol.ByteCount(len(entry.Data))
	}
	return nil
}
