// libFuzzer target over the frame decoder and every message decoder. Built by tools/fuzz
// with -sanitize=fuzzer,address; an ordinary build links it as an empty program.
import LiveRoomMessages
import LiveRoomRPC
import NIOCore

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzz(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    let bytes = UnsafeBufferPointer(start: data, count: size)
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
