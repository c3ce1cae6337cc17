"""Nova's real libvirt driver as a small process the tests talk to (run by the Nova venv's python).

    <venv>/bin/python -P tests/harness/nova_compute.py --config-file nova.conf --setup setup.json

This is NOT imported by the tests (they run Debian's python without Nova): it is the
program tests/harness/nova.py starts (with -P: this directory holds
tests/harness/nova.py, which must not shadow the ``nova`` package). It loads ``nova.virt.libvirt.driver.LibvirtDriver``
from the installed Nova, calls ``init_host``, then reads one JSON command per line on
stdin and answers one JSON line on its reply pipe (the original stdout; everything
else the process prints goes to stderr, Nova's own log goes to the log file in the
config)::

    {"op": "spawn"}                 -> LibvirtDriver.spawn(...)
    {"op": "reboot", "type": "HARD"|"SOFT"}
    {"op": "power_off"} / {"op": "power_on"}
    {"op": "destroy", "destroy_disks": true}
    {"op": "rescue"} / {"op": "unrescue"}       (the rescue image is the instance's own image)
    {"op": "suspend"} / {"op": "resume"}        (managed save, and the start that restores it)
    {"op": "migrate_disk_and_power_off", "dest": IP, "memory_mb": N}   -> {"disk_info": ...}
    {"op": "finish_migration", "disk_info": ..., "source": HOST, "memory_mb": N}
    {"op": "finish_revert_migration"}
    {"op": "check_can_live_migrate_destination", "src_cpu_info": ...} -> {"migrate_data": primitive}
    {"op": "check_can_live_migrate_source", "migrate_data": ...}      -> {"migrate_data": ...}
    {"op": "pre_live_migration", "migrate_data": ...}                  -> {"migrate_data": ...}
    {"op": "live_migration", "dest": HOST, "migrate_data": ...}       -> {"post": bool, "recover": bool}
    {"op": "post_live_migration_at_destination"}
    {"op": "cpu_info"}              -> {"cpu_info": the JSON the resource tracker reports}
    {"op": "events"}                -> {"events": [{"uuid", "transition"}]}: the lifecycle
                                       events the driver emitted (from libvirt's events)
    {"op": "list_instances"}        -> {"instances": [...]}: LibvirtDriver.list_instances, the
                                       cheapest call that goes through Host.get_connection
                                       (and so reconnects when libvirt's connection was lost)
    {"op": "service"}               -> {"history": [[disabled, reason], ...]}: every change the
                                       driver made to its compute service record (Nova disables
                                       it when its libvirt connection is lost, enables it again
                                       when it reconnects)
    {"op": "quit"}
    reply: {"ok": true, "op": ..., "seconds": ...} or {"ok": false, "error": "...", "traceback": "..."}

What is real and what is stubbed is described ONCE, in tests/harness/nova.py's
docstring; the stubs themselves are the functions named ``stub_*`` below.
"""

# As nova-compute (nova/cmd/__init__.py): native threading unless nova.conf's [DEFAULT]
# concurrency_backend (or OS_NOVA_DISABLE_EVENTLET_PATCHING) asks for eventlet; this must run
# before anything else is imported, so that eventlet's monkey patching (if chosen) is complete.
from nova import monkey_patch; monkey_patch.patch(backend='threading')  # noqa: E702

import argparse  # noqa: E402
import contextlib  # noqa: E402
import faulthandler  # noqa: E402
import signal  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import shutil  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import traceback  # noqa: E402

import nova.conf  # noqa: E402
from nova import config, context as nova_context, objects  # noqa: E402
from nova.network import model as network_model  # noqa: E402
from nova.virt import virtapi  # noqa: E402
from oslo_log import log as logging  # noqa: E402
from oslo_serialization import jsonutils  # noqa: E402
from oslo_utils import uuidutils  # noqa: E402

CONF = nova.conf.CONF
#: [disabled, disabled_reason] at each save of the compute service record (stub_persistence)
SERVICE_HISTORY: list = []


def stdin_lines():
    """The commands, one per line. In eventlet mode stdin is read through eventlet's GreenPipe
    (as Nova reads its own event pipe): a plain blocking read would block the one native
    thread that runs every greenthread (Nova's event dispatch and its delayed Stopped event
    among them) while the test waits between commands. (eventlet's green select.select on
    fd 0 never returned here; GreenPipe's readline does.) In threading mode: plain stdin."""
    from nova import monkey_patch
    if monkey_patch.is_patched():
        import eventlet.greenio
        readline = eventlet.greenio.GreenPipe(0, "rb", 0).readline
    else:
        readline = sys.stdin.buffer.readline
    while True:
        line = readline()
        if not line:
            return
        yield line.decode()


class StubVirtAPI(virtapi.VirtAPI):
    """Stub of nova-compute's ComputeVirtAPI: Neutron's external events never come (there
    are no ports), placement is never asked."""

    @contextlib.contextmanager
    def wait_for_instance_event(self, instance, event_names, **kwargs):
        if event_names:
            raise RuntimeError(f"stub virtapi: no Neutron here, cannot wait for {event_names}")
        yield

    def exit_wait_early(self, events):
        pass

    def update_compute_provider_status(self, context, rp_uuid, enabled):
        pass

    @property
    def reportclient(self):
        raise RuntimeError("stub virtapi: no placement here")


def stub_persistence() -> None:
    """Stub of the DB/conductor: Instance.save and Migration.save keep the changes in memory; the compute
    service is registered and enabled; the instance has no block device mappings, virtual
    interfaces or share mappings.
    No database is configured, so any other persistence call fails loudly."""

    def save(self, *args, **kwargs):
        self.obj_reset_changes(recursive=True)
    objects.Instance.save = save
    objects.Migration.save = save                  # live migration's monitor records progress

    # The compute service record the driver enables/disables with libvirt's connection:
    # found, enabled; a change is kept in memory.
    service = objects.Service(host=CONF.host, binary="nova-compute", topic="compute", disabled=False,
                              disabled_reason=None, forced_down=False)

    def save_service():
        SERVICE_HISTORY.append([service.disabled, service.disabled_reason])
        service.obj_reset_changes()
    service.save = save_service
    objects.Service.get_by_compute_host = classmethod(lambda cls, context, host, use_slave=False: service)

    # The per-instance lists the driver reads: none of each (image-backed, no volumes,
    # no ports, no shares).
    for list_cls in (objects.BlockDeviceMappingList, objects.VirtualInterfaceList, objects.ShareMappingList):
        def none_of_them(cls, context, instance_uuid, *args, **kwargs):
            return cls(objects=[])
        list_cls.get_by_instance_uuid = classmethod(none_of_them)


def stub_glance() -> None:
    """Stub of Glance's download: every image is pre-placed in Nova's image cache
    (<instances_path>/_base), so a download attempt is a test failure."""
    from nova.virt import images
    from nova.virt.libvirt import utils as libvirt_utils

    def refuse(context, target, image_id, *args, **kwargs):
        raise RuntimeError(f"stub glance: image {image_id} should have been in the image cache ({target})")
    images.fetch = refuse
    images.fetch_to_raw = refuse
    libvirt_utils.fetch_image = refuse
    libvirt_utils.fetch_raw_image = refuse


def run_privsep_in_process() -> None:
    """This process runs as root (as the tests do): privsep's entry points run in-process
    instead of through a rootwrap'd privsep-helper daemon."""
    import nova.privsep
    nova.privsep.sys_admin_pctxt.set_client_mode(False)
    try:
        import os_brick.privileged
        os_brick.privileged.default.set_client_mode(False)
    except ImportError:
        pass


def stub_remotefs() -> None:
    """Stub of Nova's ssh/rsync "remote filesystem" (RemoteFilesystem, used by cold migration
    to create the instance directory on the destination, to probe for shared storage and to
    copy disks): both compute hosts are this machine, so each command runs here, on the
    path after ``host:``. With the shared instances_path of these tests, Nova's own probe
    (create a file "on the destination", see it locally) finds the storage shared."""
    import subprocess
    from nova.virt.libvirt.volume import remotefs

    def local(path):
        return path.split(":", 1)[1] if ":" in path else path
    remotefs.RemoteFilesystem.create_file = lambda self, host, dst, *a, **k: open(dst, "a").close()
    remotefs.RemoteFilesystem.remove_file = lambda self, host, dst, *a, **k: os.unlink(dst)
    remotefs.RemoteFilesystem.create_dir = lambda self, host, dst, *a, **k: os.makedirs(dst, exist_ok=True)
    remotefs.RemoteFilesystem.remove_dir = lambda self, host, dst, *a, **k: shutil.rmtree(dst)
    remotefs.RemoteFilesystem.copy_file = lambda self, src, dst, *a, **k: subprocess.run(
        ["cp", "-r", local(src), local(dst)], check=True)


def stub_host_network(drv, setup: dict) -> None:
    """Stubs of what lies between the two compute hosts of one machine: the destination's
    libvirtd is reached on its unix socket (setup's ``peer_libvirt_uris``, by the address
    Nova would put into qemu+tcp://ADDR/system), and Neutron's port-binding extension is
    absent (there are no ports)."""
    peers = setup.get("peer_libvirt_uris", {})

    def uri(dest):
        if dest not in peers:
            raise RuntimeError(f"stub host network: no libvirtd known at {dest!r} ({peers})")
        return peers[dest]
    drv._live_migration_uri = uri
    drv._network_api.has_port_binding_extension = lambda context: False


def add_unsafe_to_live_migration_flags() -> None:
    """The one change to what Nova asks libvirt: VIR_MIGRATE_UNSAFE added to the live
    migration flags Nova computed. The two hosts share their instances_path (so Nova needs
    no block migration, and rightly says so), but it is a local file system, which libvirt
    detects and refuses: "Unsafe migration: Migration without shared storage is unsafe"
    (a real NFS mount would pass that check)."""
    import libvirt
    from nova.virt.libvirt import guest as libvirt_guest
    migrate = libvirt_guest.Guest.migrate

    def migrate_unsafe(self, destination, *args, flags=0, **kwargs):
        return migrate(self, destination, *args, flags=flags | libvirt.VIR_MIGRATE_UNSAFE, **kwargs)
    libvirt_guest.Guest.migrate = migrate_unsafe


def flavor(memory_mb: int):
    return objects.Flavor(
        id=memory_mb, flavorid=str(memory_mb), name=f"m1.{memory_mb}", memory_mb=memory_mb, vcpus=1,
        root_gb=0, ephemeral_gb=0, swap=0, extra_specs={}, rxtx_factor=1.0, vcpu_weight=0,
        is_public=True, disabled=False, description=None)


def place_images(setup: dict) -> None:
    """Put the guest's kernel, initrd and root disk into Nova's image cache, under the
    names Nova's own imagecache.get_cache_fname gives their image ids."""
    from nova.virt.libvirt import imagecache
    base = os.path.join(CONF.instances_path, CONF.image_cache.subdirectory_name)
    os.makedirs(base, exist_ok=True)
    for key in ("image", "kernel", "ramdisk"):
        src = setup["files"][key]
        dst = os.path.join(base, imagecache.get_cache_fname(setup[f"{key}_id"]))
        if not os.path.exists(dst):
            shutil.copyfile(src, dst)


def make_instance(setup: dict, ctx):
    """The instance nova-conductor would have created (kept in memory only)."""
    from nova import utils
    flavor = objects.Flavor(
        id=1, flavorid="1", name="m1.nano", memory_mb=setup.get("memory_mb", 128), vcpus=1,
        root_gb=0, ephemeral_gb=0, swap=0, extra_specs={}, rxtx_factor=1.0, vcpu_weight=0,
        is_public=True, disabled=False, description=None)
    image_meta = setup["image_meta"]
    inst = objects.Instance(
        context=ctx, id=setup["instance_id"], uuid=setup["uuid"], display_name=setup.get("display_name", "vm-1"),
        hostname=setup.get("display_name", "vm-1"), project_id=ctx.project_id, user_id=ctx.user_id,
        image_ref=setup["image_id"], kernel_id=setup["kernel_id"], ramdisk_id=setup["ramdisk_id"],
        flavor=flavor, old_flavor=None, new_flavor=None, instance_type_id=flavor.id,
        memory_mb=flavor.memory_mb, vcpus=flavor.vcpus, root_gb=0, ephemeral_gb=0,
        host=CONF.host, node=CONF.host, launched_on=CONF.host, availability_zone="nova",
        vm_state="building", task_state="spawning", power_state=0, os_type=None,
        architecture="x86_64", vm_mode=None, config_drive="", key_data=None, key_name=None,
        root_device_name=None, default_ephemeral_device=None, default_swap_device=None,
        system_metadata=utils.get_system_metadata_from_image(image_meta, flavor),
        numa_topology=None, pci_requests=objects.InstancePCIRequests(requests=[]),
        pci_devices=objects.PciDeviceList(objects=[]), vcpu_model=None, ephemeral_key_uuid=None,
        trusted_certs=None, resources=None, device_metadata=None, migration_context=None,
        keypairs=objects.KeyPairList(objects=[]), tags=objects.TagList(objects=[]),
        services=objects.ServiceList(objects=[]), metadata={}, info_cache=objects.InstanceInfoCache(network_info=network_model.NetworkInfo([])),
        security_groups=objects.SecurityGroupList(objects=[]),
        access_ip_v4=None, access_ip_v6=None, launch_index=0, hidden=False, cleaned=False,
        shutdown_terminate=False, disable_terminate=False, locked=False, locked_by=None,
        auto_disk_config=False, progress=0, user_data=None, reservation_id="r-stub",
        ec2_ids=objects.EC2Ids(instance_id="i-00000001", ami_id="ami-00000001"), deleted=False, created_at=None, updated_at=None, launched_at=None,
        terminated_at=None, deleted_at=None, display_description=None, compute_id=None)
    inst.obj_reset_changes(recursive=True)
    return inst


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--config-file", required=True)
    ap.add_argument("--setup", required=True)
    args = ap.parse_args()
    # the test sends SIGUSR1 when an answer does not come: every native thread's stack
    # then lands in driver.stderr, which the failure message shows
    faulthandler.register(signal.SIGUSR1, all_threads=True)
    reply = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)                                      # stray prints must not reach the reply pipe
    with open(args.setup) as f:
        setup = json.load(f)

    config.parse_args(["nova-compute", "--config-file", args.config_file])
    logging.setup(CONF, "nova")
    nova.conf.neutron.register_dynamic_opts(CONF)      # as nova-compute's manager does
    objects.register_all()
    run_privsep_in_process()
    stub_persistence()
    stub_glance()
    stub_remotefs()
    add_unsafe_to_live_migration_flags()
    place_images(setup)

    from nova.virt.libvirt import driver as libvirt_driver
    ctx = nova_context.RequestContext(user_id="stub-user", project_id="stub-project",
                                      auth_token="stub-token", is_admin=True)
    image_meta = objects.ImageMeta.from_dict(setup["image_meta"])
    instance = make_instance(setup, ctx)
    network_info = network_model.NetworkInfo([])

    t0 = time.monotonic()
    drv = libvirt_driver.LibvirtDriver(StubVirtAPI(), read_only=False)
    events = []                    # what the compute manager's handle_events would get
    drv.register_event_listener(lambda ev: events.append(
        {"uuid": ev.get_instance_uuid(), "transition": ev.get_name()}))
    drv.init_host(CONF.host)
    stub_host_network(drv, setup)
    from nova import monkey_patch, utils as nova_utils
    import oslo_service.backend
    reply.write(json.dumps({"ok": True, "op": "init_host", "seconds": round(time.monotonic() - t0, 2),
                            "instance_name": instance.name,
                            # what this Nova runs on: for the test to check the mode it asked for
                            "concurrency": {
                                "eventlet_patched": monkey_patch.is_patched(),
                                "threading": nova_utils.concurrency_mode_threading(),
                                "event_handler": type(drv._host._event_handler).__name__,
                                "service_backend": oslo_service.backend.get_backend_type().name,
                                "eventlet_imported": "eventlet" in sys.modules}}) + "\n")

    ops = {
        "spawn": lambda cmd: drv.spawn(ctx, instance, image_meta, [], None, {}, network_info=network_info,
                                       block_device_info=None),
        "reboot": lambda cmd: drv.reboot(ctx, instance, network_info, cmd["type"], block_device_info=None),
        "power_off": lambda cmd: drv.power_off(instance, timeout=cmd.get("timeout", 0)),
        "power_on": lambda cmd: drv.power_on(ctx, instance, network_info, block_device_info=None),
        "destroy": lambda cmd: drv.destroy(ctx, instance, network_info, block_device_info=None,
                                           destroy_disks=cmd.get("destroy_disks", True)),
        "events": lambda cmd: {"events": list(events)},
        "list_instances": lambda cmd: {"instances": drv.list_instances()},
        "service": lambda cmd: {"history": list(SERVICE_HISTORY)},
        # rescue with the instance's own image as the rescue image (the API's default when
        # no rescue image is given: instance.image_ref, and its kernel/ramdisk)
        "rescue": lambda cmd: drv.rescue(ctx, instance, network_info, image_meta, None, None,
                                         objects.ShareMappingList()),
        "unrescue": lambda cmd: drv.unrescue(ctx, instance),
        "suspend": lambda cmd: drv.suspend(ctx, instance),
        "resume": lambda cmd: drv.resume(ctx, instance, network_info, block_device_info=None),
        # as the resource tracker reports it (compute node's cpu_info: a JSON string)
        "cpu_info": lambda cmd: {"cpu_info": jsonutils.dumps(drv._get_cpu_info())},
    }

    def resize_to(cmd):
        # what the compute manager's resize_instance sets before the driver call
        instance.old_flavor, instance.new_flavor = instance.flavor, flavor(cmd["memory_mb"])
        disk_info = drv.migrate_disk_and_power_off(ctx, instance, cmd["dest"], instance.new_flavor,
                                                   network_info, None, timeout=0, retry_interval=0)
        return {"disk_info": disk_info}

    def finish_migration(cmd):
        # the compute manager's _finish_resize: the instance now has the new flavor and host
        instance.old_flavor, instance.new_flavor = instance.flavor, flavor(cmd["memory_mb"])
        instance.flavor = instance.new_flavor
        instance.memory_mb = instance.flavor.memory_mb
        migration = objects.Migration(source_compute=cmd["source"], dest_compute=CONF.host,
                                      source_node=cmd["source"], dest_node=CONF.host,
                                      migration_type="resize", status="migrating")
        drv.finish_migration(ctx, migration, instance, cmd["disk_info"], network_info, image_meta,
                             True, {}, block_device_info=None, power_on=True,
                             share_info=objects.ShareMappingList())

    def finish_revert_migration(cmd):
        # the compute manager's finish_revert_resize: back to the old flavor
        instance.flavor = instance.old_flavor
        instance.memory_mb = instance.flavor.memory_mb
        migration = objects.Migration(source_compute=CONF.host, dest_compute="?", migration_type="resize",
                                      status="reverting")
        drv.finish_revert_migration(ctx, instance, network_info, migration, block_device_info=None,
                                    power_on=True, share_info=objects.ShareMappingList())

    from nova.objects import base as objects_base

    def prim(data):
        return {"migrate_data": data.obj_to_primitive()}

    def unprim(cmd):
        return objects_base.NovaObject.obj_from_primitive(cmd["migrate_data"])

    def live_migration(cmd):
        done = {}
        migrate_data = unprim(cmd)
        # the compute manager's live_migration hands its Migration record to the driver
        migrate_data.migration = objects.Migration(
            uuid=uuidutils.generate_uuid(), source_compute=CONF.host, dest_compute=cmd["dest"],
            source_node=CONF.host, dest_node=cmd["dest"], migration_type="live-migration",
            status="running", instance_uuid=instance.uuid)
        drv.live_migration(ctx, instance, cmd["dest"],
                           lambda *a, **k: done.setdefault("post", True),
                           lambda *a, **k: done.setdefault("recover", True),
                           block_migration=False, migrate_data=migrate_data)
        return {"post": done.get("post", False), "recover": done.get("recover", False)}

    ops.update({
        "migrate_disk_and_power_off": resize_to,
        "finish_migration": finish_migration,
        "finish_revert_migration": finish_revert_migration,
        "check_can_live_migrate_destination": lambda cmd: prim(drv.check_can_live_migrate_destination(
            ctx, instance, {"cpu_info": cmd["src_cpu_info"]}, {"disk_available_least": 10},
            block_migration=False, disk_over_commit=False)),
        "check_can_live_migrate_source": lambda cmd: prim(drv.check_can_live_migrate_source(
            ctx, instance, unprim(cmd), block_device_info=None)),
        "pre_live_migration": lambda cmd: prim(drv.pre_live_migration(
            ctx, instance, None, network_info, None, unprim(cmd))),
        "live_migration": live_migration,
        "post_live_migration_at_destination": lambda cmd: drv.post_live_migration_at_destination(
            ctx, instance, network_info, block_migration=False, block_device_info=None),
    })
    for line in stdin_lines():
        cmd = json.loads(line)
        if cmd["op"] == "quit":
            reply.write(json.dumps({"ok": True, "op": "quit"}) + "\n")
            break
        t0 = time.monotonic()
        try:
            result = ops[cmd["op"]](cmd)
            answer = {"ok": True, **(result if isinstance(result, dict) else {})}
        except Exception as err:
            answer = {"ok": False, "error": f"{type(err).__name__}: {err}", "traceback": traceback.format_exc()}
        answer.update(op=cmd["op"], seconds=round(time.monotonic() - t0, 2))
        reply.write(jsonutils.dumps(answer) + "\n")       # oslo's: object primitives hold sets
    return 0


if __name__ == "__main__":
    code = main()
    sys.stderr.flush()
    os._exit(code)          # libvirt's event thread (not a daemon thread) would keep the process alive
