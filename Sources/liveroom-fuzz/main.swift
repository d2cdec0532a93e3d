// libFuzzer targets: the RPC frame decoder and every message decoder (default), with
// LIVEROOM_FUZZ_TARGET=rtmp the RTMP chunk parser, AMF0 decoder and FLV muxer, with rtmp-client
// what the RTMP client (relay, mirror) reads from a server and the FLV tag reader, with playback
// the demuxers and packager that remux a publisher's stream for HTTP players, and with
// LIVEROOM_FUZZ_TARGET=daemon a whole daemon driven over its sockets (DaemonTarget.swift). Built by
// tools/fuzz with -sanitize=fuzzer,address; an ordinary build links it as an empty program.
import Foundation
import LiveRoomMessages
import LiveRoomPlayback
import LiveRoomRPC
import LiveRoomRTMP
import NIOCore

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzz(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    let bytes = UnsafeBufferPointer(start: data, count: size)
    if let target = getenv("LIVEROOM_FUZZ_TARGET").map({ String(cString: $0) }) {
        if target == "rtmp" {
            fuzzRTMP(bytes)
            return 0
        }
        if target == "rtmp-client" {
            fuzzRTMPClient(bytes)
            return 0
        }
        if target == "daemon" {
            fuzzDaemon(bytes)
            return 0
        }
        if target == "playback" {
            fuzzPlayback(bytes)
            return 0
        }
    }
    // The byte stream as a server reads it, after the preface.
    var buffer = ByteBuffer(bytes: bytes)
    var decoder = FrameDecoder(maxFrameSize: 1 << 16, expectPreface: false)
    let events = (try? decoder.decodeAll(&buffer)) ?? []
    for case .frame(let frame) in events {
        _ = try? CallHeader(buffer: frame.payload)
        _ = try? CallStatus(buffer: frame.payload)
        _ = try? GoAway(buffer: frame.payload)
        if let payload = try? RPCPayload(frame: frame) {
            _ = try? MessageCoding.decode(payload, as: StreamDataRequest.self)
        }
    }
    // The whole input as each message type, and back through the encoder and JSON.
    let whole = ByteBuffer(bytes: bytes)
    for type in AllMessages.types {
        if let m = try? type.init(buffer: whole) {
            _ = try? m.serializedBytes()
            _ = try? ProtoJSON.text(from: whole, as: type.protoDescriptor)
        }
    }
    return 0
}

/// A server's answer as the RTMP client reads it (relays and mirror pulls), and the same bytes
/// as a room's media for the relay's FLV tag reader.
func fuzzRTMPClient(_ bytes: UnsafeBufferPointer<UInt8>) {
    var limits = RTMPLimits()
    limits.maxMessageSize = 1 << 16
    limits.maxBufferedBytes = 1 << 17
    let buffer = ByteBuffer(bytes: bytes)
    _ = RTMPClient.readServerBytes(buffer, limits: limits)
    var reader = FLVTagReader()
    var rest = buffer
    while rest.readableBytes > 0 {
        reader.feed(rest.readSlice(length: min(97, rest.readableBytes))!)
        do { while try reader.next() != nil {} } catch { break }
    }
}

/// A publisher's bytes as the HTTP packager reads them: demuxed (FLV or MPEG-TS, by the first
/// byte), cut into fMP4 parts and segments, and listed in a playlist. A publisher must never
/// crash the daemon, whatever it sends.
func fuzzPlayback(_ bytes: UnsafeBufferPointer<UInt8>) {
    var demuxer = StreamDemuxer()
    var packager = Packager()
    var rest = ByteBuffer(bytes: bytes)
    while rest.readableBytes > 0 {
        guard let piece = rest.readSlice(length: min(211, rest.readableBytes)), let items = try? demuxer.feed(piece) else { break }
        _ = packager.feed(items)
    }
    _ = packager.feed(demuxer.flush())
    _ = packager.finish()
    _ = HLSPlaylist.render(packager, query: "t=x", prefix: "s-")
}

/// The bytes after the handshake, as an RTMP server reads them.
func fuzzRTMP(_ bytes: UnsafeBufferPointer<UInt8>) {
    var limits = RTMPLimits()
    limits.maxMessageSize = 1 << 16
    limits.maxBufferedBytes = 1 << 17
    var decoder = RTMPChunkDecoder(limits: limits)
    var buffer = ByteBuffer(bytes: bytes)
    var muxer = FLVMuxer()
    while let next = try? decoder.next(&buffer) {
        guard let message = next else { continue }
        switch message.type {
        case .commandAMF0, .dataAMF0: _ = try? AMF0.decodeAll(message.payload)
        default: _ = muxer.tag(for: message)
        }
    }
    if let values = try? AMF0.decodeAll(ByteBuffer(bytes: bytes)) {
        // What decodes must encode and decode to the same values.
        precondition((try? AMF0.decodeAll(AMF0.encode(values))) == values, "AMF0 round trip changed a value")
    }
}
