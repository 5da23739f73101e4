package nbdserver

// Constants of the NBD protocol (NetworkBlockDevice/nbd doc/proto.md), server side
// of the fixed newstyle handshake with structured replies.

const (
	magicInit        = 0x4e42444d41474943 // "NBDMAGIC"
	magicOption      = 0x49484156454f5054 // "IHAVEOPT"
	magicOptionReply = 0x0003e889045565a9
	magicRequest     = 0x25609513
	magicSimple      = 0x67446698
	magicStructured  = 0x668e33ef
)

// Handshake flags (server) and client flags.
const (
	flagFixedNewstyle = 1 << 0
	flagNoZeroes      = 1 << 1
)

// Options.
const (
	optExportName      = 1
	optAbort           = 2
	optList            = 3
	optStartTLS        = 5
	optInfo            = 6
	optGo              = 7
	optStructuredReply = 8
	optListMetaContext = 9
	optSetMetaContext  = 10
)

// Option reply types.
const (
	repAck         = 1
	repServer      = 2
	repInfo        = 3
	repMetaContext = 4
	repErrUnsup    = 1<<31 + 1
	repErrPolicy   = 1<<31 + 2
	repErrInvalid  = 1<<31 + 3
	repErrTLSReqd  = 1<<31 + 5
	repErrUnknown  = 1<<31 + 6
	repErrTooBig   = 1<<31 + 9
)

// Info types of NBD_OPT_INFO and NBD_OPT_GO.
const (
	infoExport    = 0
	infoBlockSize = 3
)

// Transmission flags.
const (
	txHasFlags     = 1 << 0
	txReadOnly     = 1 << 1
	txSendFlush    = 1 << 2
	txSendFUA      = 1 << 3
	txSendTrim     = 1 << 5
	txWriteZeroes  = 1 << 6
	txSendDF       = 1 << 7
	txCanMultiConn = 1 << 8
)

// Commands.
const (
	cmdRead        = 0
	cmdWrite       = 1
	cmdDisc        = 2
	cmdFlush       = 3
	cmdTrim        = 4
	cmdWriteZeroes = 6
	cmdBlockStatus = 7
)

// Command flags.
const (
	cmdFlagFUA    = 1 << 0
	cmdFlagReqOne = 1 << 3
)

// Structured reply chunk types and flags.
const (
	replyFlagDone    = 1 << 0
	replyOffsetData  = 1
	replyBlockStatus = 5
	replyError       = 1<<15 + 1
)

// Errors sent to clients (Linux errno values, as the protocol fixes them).
const (
	errPerm     = 1
	errIO       = 5
	errNoMem    = 12
	errInval    = 22
	errNoSpc    = 28
	errOverflow = 75
	errNotSup   = 95
	errShutdown = 108
)

// StateHole and StateZero are the flags of the base:allocation meta context: a
// hole reads as zeroes and takes no space; zero says the range reads as zeroes.
const (
	StateHole = 1 << 0
	StateZero = 1 << 1
)

// metaBaseAllocation is the one meta context the server offers, with this id.
const (
	metaBaseAllocation   = "base:allocation"
	metaBaseAllocationID = 1
)
