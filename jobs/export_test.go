package jobs

// Peak is the largest reservation the budget has held, for tests of the bound.
func (b *MemoryBudget) Peak() int64 { return b.peak.Load() }
