// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.37;

import {ERC20} from "@openzeppelin/contracts/token/ERC20/ERC20.sol";
import {ERC20Permit} from "@openzeppelin/contracts/token/ERC20/extensions/ERC20Permit.sol";
import {Ownable} from "@openzeppelin/contracts/access/Ownable.sol";
import {ECDSA} from "@openzeppelin/contracts/utils/cryptography/ECDSA.sol";

/// @title PermitStablecoin
/// @notice Test stablecoin shaped like USDC: 6 decimals, EIP-2612 `permit` and EIP-3009
/// transfers with authorization (`transferWithAuthorization`, `receiveWithAuthorization`,
/// `cancelAuthorization`). The owner can mint any amount, so it must never be listed as an
/// accepted token on a production chain.
/// @dev Both signature schemes use the EIP-712 domain of ERC20Permit: the token name, version
/// "1", the chain id and this contract's address (`eip712Domain()` returns it). Signatures
/// are checked with ECDSA only, so a smart-contract wallet (ERC-1271) cannot sign a permit or
/// an authorization. An EIP-3009 nonce is a random 32-byte value chosen by the signer, and
/// each (authorizer, nonce) pair can be used or cancelled once.
contract PermitStablecoin is ERC20Permit, Ownable {
    /// @notice keccak256 of the EIP-3009 TransferWithAuthorization type.
    bytes32 public constant TRANSFER_WITH_AUTHORIZATION_TYPEHASH = keccak256(
        "TransferWithAuthorization(address from,address to,uint256 value,uint256 validAfter,uint256 validBefore,bytes32 nonce)"
    );

    /// @notice keccak256 of the EIP-3009 ReceiveWithAuthorization type.
    bytes32 public constant RECEIVE_WITH_AUTHORIZATION_TYPEHASH = keccak256(
        "ReceiveWithAuthorization(address from,address to,uint256 value,uint256 validAfter,uint256 validBefore,bytes32 nonce)"
    );

    /// @notice keccak256 of the EIP-3009 CancelAuthorization type.
    bytes32 public constant CANCEL_AUTHORIZATION_TYPEHASH =
        keccak256("CancelAuthorization(address authorizer,bytes32 nonce)");

    mapping(address authorizer => mapping(bytes32 nonce => bool)) private _authorizationUsed;

    /// @notice An authorization was executed, so its nonce cannot be used again.
    event AuthorizationUsed(address indexed authorizer, bytes32 indexed nonce);
    /// @notice An authorization was cancelled before use, so its nonce cannot be used.
    event AuthorizationCanceled(address indexed authorizer, bytes32 indexed nonce);

    /// @notice The block timestamp is not after `validAfter`.
    error AuthorizationNotYetValid(uint256 validAfter, uint256 blockTimestamp);
    /// @notice The block timestamp is not before `validBefore`.
    error AuthorizationExpired(uint256 validBefore, uint256 blockTimestamp);
    /// @notice The nonce was already used or cancelled by `authorizer`.
    error AuthorizationAlreadyUsed(address authorizer, bytes32 nonce);
    /// @notice The signature was made by `signer`, not by `authorizer`.
    error InvalidAuthorizationSigner(address signer, address authorizer);
    /// @notice `receiveWithAuthorization` was called by `caller`, not by the payee `payee`.
    error CallerNotPayee(address caller, address payee);

    constructor(string memory name_, string memory symbol_)
        ERC20(name_, symbol_)
        ERC20Permit(name_)
        Ownable(msg.sender)
    {}

    /// @notice Number of decimals, fixed at 6 like USDC.
    function decimals() public pure override returns (uint8) {
        return 6;
    }

    /// @notice Creates `value` base units and assigns them to `to`. Only the owner can call it.
    function mint(address to, uint256 value) external onlyOwner {
        _mint(to, value);
    }

    /// @notice Returns whether `authorizer` has used or cancelled `nonce`.
    function authorizationState(address authorizer, bytes32 nonce) external view returns (bool) {
        return _authorizationUsed[authorizer][nonce];
    }

    /// @notice Moves `value` from `from` to `to` with a TransferWithAuthorization signed by
    /// `from`. Anyone can submit it, so a payee contract should use `receiveWithAuthorization`,
    /// which an observer of the pending transaction cannot submit first.
    /// @param validAfter the authorization is valid only in blocks with a timestamp after it
    /// @param validBefore the authorization is valid only in blocks with a timestamp before it
    function transferWithAuthorization(
        address from,
        address to,
        uint256 value,
        uint256 validAfter,
        uint256 validBefore,
        bytes32 nonce,
        uint8 v,
        bytes32 r,
        bytes32 s
    ) external {
        bytes32 structHash = keccak256(
            abi.encode(TRANSFER_WITH_AUTHORIZATION_TYPEHASH, from, to, value, validAfter, validBefore, nonce)
        );
        _useAuthorization(from, structHash, validAfter, validBefore, nonce, v, r, s);
        _transfer(from, to, value);
    }

    /// @notice Moves `value` from `from` to `to` with a ReceiveWithAuthorization signed by
    /// `from`. Only the payee `to` can submit it.
    /// @param validAfter the authorization is valid only in blocks with a timestamp after it
    /// @param validBefore the authorization is valid only in blocks with a timestamp before it
    function receiveWithAuthorization(
        address from,
        address to,
        uint256 value,
        uint256 validAfter,
        uint256 validBefore,
        bytes32 nonce,
        uint8 v,
        bytes32 r,
        bytes32 s
    ) external {
        if (msg.sender != to) {
            revert CallerNotPayee(msg.sender, to);
        }
        bytes32 structHash = keccak256(
            abi.encode(RECEIVE_WITH_AUTHORIZATION_TYPEHASH, from, to, value, validAfter, validBefore, nonce)
        );
        _useAuthorization(from, structHash, validAfter, validBefore, nonce, v, r, s);
        _transfer(from, to, value);
    }

    /// @notice Marks `nonce` of `authorizer` as used without moving tokens, with a
    /// CancelAuthorization signed by `authorizer`. Anyone can submit it.
    function cancelAuthorization(address authorizer, bytes32 nonce, uint8 v, bytes32 r, bytes32 s) external {
        _requireUnusedAuthorization(authorizer, nonce);
        bytes32 structHash = keccak256(abi.encode(CANCEL_AUTHORIZATION_TYPEHASH, authorizer, nonce));
        _requireSigner(authorizer, structHash, v, r, s);
        _authorizationUsed[authorizer][nonce] = true;
        emit AuthorizationCanceled(authorizer, nonce);
    }

    function _useAuthorization(
        address authorizer,
        bytes32 structHash,
        uint256 validAfter,
        uint256 validBefore,
        bytes32 nonce,
        uint8 v,
        bytes32 r,
        bytes32 s
    ) private {
        if (block.timestamp <= validAfter) {
            revert AuthorizationNotYetValid(validAfter, block.timestamp);
        }
        if (block.timestamp >= validBefore) {
            revert AuthorizationExpired(validBefore, block.timestamp);
        }
        _requireUnusedAuthorization(authorizer, nonce);
        _requireSigner(authorizer, structHash, v, r, s);
        _authorizationUsed[authorizer][nonce] = true;
        emit AuthorizationUsed(authorizer, nonce);
    }

    function _requireUnusedAuthorization(address authorizer, bytes32 nonce) private view {
        if (_authorizationUsed[authorizer][nonce]) {
            revert AuthorizationAlreadyUsed(authorizer, nonce);
        }
    }

    /// @dev ECDSA.recover rejects malleable signatures (high s) and never returns the zero
    /// address, so a zero `authorizer` can never match.
    function _requireSigner(address authorizer, bytes32 structHash, uint8 v, bytes32 r, bytes32 s) private view {
        address signer = ECDSA.recover(_hashTypedDataV4(structHash), v, r, s);
        if (signer != authorizer) {
            revert InvalidAuthorizationSigner(signer, authorizer);
        }
    }
}
